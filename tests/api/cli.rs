//! The command line: a bad configuration stops start-up with one line and
//! exit code 2 (passwords in Redis URLs hidden), environment variables
//! configure the server, `--workers` sets the threads serving connections,
//! and secrets never show in `--help`.

use std::time::Duration;

use crate::support::{paypush_command, refused_at_start, start_binary, temp_dir};

#[tokio::test]
async fn bad_configuration_stops_start_up_with_one_line_and_exit_2() {
    for flags in [
        &["--push-timeout", "soon"][..],
        &["--max-streams", "0"],
        &["--bind", "nowhere"],
        &["--workers", "0"],
    ] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_paypush"));
        command.args(flags);
        let stderr = refused_at_start(command).await;
        assert!(stderr.starts_with("error:"), "{flags:?}: {stderr}");
    }
}

/// The names of a process's threads, from `/proc`.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap())
        .map(|name| name.trim_end().to_string())
        .collect()
}

#[tokio::test]
async fn workers_sets_the_threads_serving_connections() {
    let runtime_threads = |names: &[String]| {
        names
            .iter()
            .filter(|name| name.as_str() == "tokio-rt-worker")
            .count()
    };
    for (workers, expected) in [("1", 1), ("3", 3)] {
        let dir = temp_dir();
        let mut server = start_binary(paypush_command(dir.path()), &["--workers", workers]).await;
        let response = reqwest::get(server.url("/pay-callback?payRecordId=1"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let names = thread_names(server.child.id().unwrap());
        assert_eq!(runtime_threads(&names), expected, "{names:?}");
        server.stop("TERM").await;
    }
}

#[tokio::test]
async fn environment_variables_configure_the_server() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_paypush"))
        .env("PAYPUSH_KEEP_ALIVE", "never")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(10), output)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("keep-alive"));
}

#[tokio::test]
async fn secrets_never_show_in_help_or_logs() {
    let help = tokio::process::Command::new(env!("CARGO_BIN_EXE_paypush"))
        .arg("--help")
        .env("PAYPUSH_CALLBACK_SECRET", "hunter2-callback")
        .env("PAYPUSH_SUBSCRIBE_SECRET", "hunter2-subscribe")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--callback-secret"));
    assert!(!help.contains("hunter2"), "{help}");
}

/// What paypush prints when started with `value` as `flag`, then as the
/// environment variable `env`: it must exit 2 both times.
async fn refusal_of(flag: &str, env: &str, value: &str) -> Vec<String> {
    let mut refusals = Vec::new();
    for (flags, env) in [(vec![flag, value], vec![]), (vec![], vec![(env, value)])] {
        let dir = temp_dir();
        let output = paypush_command(dir.path())
            .args(["--bind", "127.0.0.1:0"])
            .args(&flags)
            .envs(env)
            .current_dir(dir.path())
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        refusals.push(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    refusals
}

#[tokio::test]
async fn an_invalid_redis_url_is_reported_with_its_password_hidden() {
    let url = "redis://admin:hunter2-redis@127.0.0.1:notaport/0";
    for stderr in refusal_of("--redis-url", "PAYPUSH_REDIS_URL", url).await {
        assert!(!stderr.contains("hunter2"), "{stderr}");
        assert!(
            stderr.contains("redis://admin:***@127.0.0.1:notaport/0"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn an_invalid_redis_cluster_node_list_is_reported_with_every_password_hidden() {
    let nodes = "redis://u:goodsecret@127.0.0.1:7000,redis://u:badsecret@127.0.0.1:x";
    for stderr in refusal_of("--redis-cluster", "PAYPUSH_REDIS_CLUSTER", nodes).await {
        assert!(
            !stderr.contains("goodsecret") && !stderr.contains("badsecret"),
            "{stderr}"
        );
        assert!(stderr.contains("redis://u:***@127.0.0.1:x"), "{stderr}");
    }
}
