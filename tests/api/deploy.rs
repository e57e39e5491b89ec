//! The deployment files in `deploy/` are valid as shipped.

use crate::support::Suite;

/// Never required: systemd is not in scripts/test-deps.
const SYSTEMD: Suite = Suite {
    tests: "the deployment tests",
    required_by: None,
};

/// `deploy/paypush.service` passes `systemd-analyze verify`, with its
/// `ExecStart` pointed at the built binary (verify checks that it exists).
/// Skipped, saying why, where systemd is not installed.
#[tokio::test]
async fn the_systemd_unit_verifies() {
    if !SYSTEMD.require("systemd-analyze", "systemd", "the_systemd_unit_verifies") {
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/paypush.service"
    ))
    .expect("deploy/paypush.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/paypush\n"));
    for setting in [
        "DynamicUser=yes",
        "StateDirectory=paypush",
        "LimitNOFILE=1048576",
        "Environment=PAYPUSH_DATA_DIR=/var/lib/paypush",
    ] {
        assert!(unit.contains(setting), "{setting} is missing");
    }
    let dir = crate::support::temp_dir();
    let path = dir.path().join("paypush.service");
    let unit = unit.replace("/usr/local/bin/paypush", env!("CARGO_BIN_EXE_paypush"));
    std::fs::write(&path, unit).expect("write the unit");
    let output = tokio::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .await
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("paypush.service"), "warnings: {stderr}");
}
