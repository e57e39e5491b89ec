//! The deployment files in `deploy/` are valid as shipped.

use std::io::Write;

/// `deploy/paypush.service` passes `systemd-analyze verify`, with its
/// `ExecStart` pointed at the built binary (verify checks that it exists).
/// Skipped, saying why, where systemd is not installed.
#[tokio::test]
async fn the_systemd_unit_verifies() {
    let Ok(analyze) = which("systemd-analyze") else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the_systemd_unit_verifies: no systemd-analyze on PATH (Debian's systemd)"
        );
        return;
    };
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
    let output = tokio::process::Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .await
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("paypush.service"), "warnings: {stderr}");
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.is_file())
        })
        .ok_or(())
}
