//! What paypush logs: never a secret, the demo mode and open streams
//! warnings at start-up, and a flood of refused callbacks as one line a
//! second with the count.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{spawn_binary_with_env, PATIENCE};

#[tokio::test]
async fn secret_on_the_command_line_warns_and_is_never_logged() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_paypush"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--callback-secret",
            "hunter2-cli",
            "--push-timeout",
            "nope",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("hunter2"));
    let log = spawn_and_collect_log(&["--callback-secret", "hunter2-cli"], &[]).await;
    assert!(log.contains("PAYPUSH_CALLBACK_SECRET"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    let log = spawn_and_collect_log(&[], &[("PAYPUSH_CALLBACK_SECRET", "hunter2-env")]).await;
    assert!(!log.contains("hunter2"), "{log}");
    assert!(!log.contains("demo mode"), "{log}");
    let log = spawn_and_collect_log(&[], &[]).await;
    assert!(log.contains("demo mode"), "{log}");
}

/// Starts the binary with these flags and environment, stops it with SIGTERM
/// once it listens, and returns everything it logged.
async fn spawn_and_collect_log(flags: &[&str], env: &[(&str, &str)]) -> String {
    let dir = crate::support::temp_dir();
    let mut child = crate::support::paypush_command(dir.path())
        .args(["--bind", "127.0.0.1:0"])
        .args(flags)
        .envs(env.iter().copied())
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let read_all = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("listening on") {
                std::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap();
            }
            log.push_str(&line);
            log.push('\n');
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .unwrap();
    child.wait().await.unwrap();
    log
}

/// The start-up warning about a missing subscribe secret.
const OPEN_STREAMS_WARNING: &str = "no subscribe secret";

#[tokio::test]
async fn a_callback_secret_without_a_subscribe_secret_warns_at_start_up() {
    let paypush = spawn_binary_with_env(&[], &[("PAYPUSH_CALLBACK_SECRET", "cb-secret")]).await;
    let log = paypush.logged();
    assert!(log.contains(OPEN_STREAMS_WARNING), "{log}");
    assert!(log.contains("PAYPUSH_SUBSCRIBE_SECRET"), "{log}");
}

#[tokio::test]
async fn both_secrets_start_without_the_open_streams_warning() {
    let paypush = spawn_binary_with_env(
        &[],
        &[
            ("PAYPUSH_CALLBACK_SECRET", "cb-secret"),
            ("PAYPUSH_SUBSCRIBE_SECRET", "sub-secret"),
        ],
    )
    .await;
    let log = paypush.logged();
    assert!(!log.contains(OPEN_STREAMS_WARNING), "{log}");
}

/// How many refused requests the log-flood test sends.
const FLOOD: usize = 1_500;

/// The refusals a log line accounts for: 1 for a single one, else its "N more".
fn refusals_in(line: &str) -> u64 {
    let more = line
        .split(" more ")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    match more {
        Some(n) if line.contains(" more in the last second") => n,
        Some(n) => n + 1,
        None => 1,
    }
}

#[tokio::test]
async fn a_flood_of_refused_callbacks_writes_one_log_line_a_second_with_the_count() {
    let paypush = spawn_binary_with_env(&[], &[("PAYPUSH_CALLBACK_SECRET", "cb-secret")]).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/pay-callback?payRecordId=1311", paypush.addr);
    let started = Instant::now();
    let senders: Vec<_> = (0..10)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..FLOOD / 10 {
                    let answer = client.get(&url).send().await.unwrap();
                    assert_eq!(answer.status(), 401);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let lines = || -> Vec<String> {
        paypush
            .logged()
            .lines()
            .filter(|line| line.contains("refused: invalid_signature"))
            .map(str::to_string)
            .collect()
    };
    // The last second's summary comes when that second is over.
    let deadline = Instant::now() + PATIENCE;
    while lines().iter().map(|line| refusals_in(line)).sum::<u64>() < FLOOD as u64 {
        assert!(Instant::now() < deadline, "{:#?}", lines());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = lines();
    // Every second that has begun since the flood started, its last
    // summary included: the first refusal at once, then one line a second.
    let seconds = started.elapsed().as_secs_f64().ceil() as u64;
    assert_eq!(
        lines.iter().map(|line| refusals_in(line)).sum::<u64>(),
        FLOOD as u64,
        "{lines:#?}"
    );
    assert!(
        lines.len() as u64 <= seconds + 1,
        "{} lines in {seconds} s: {lines:#?}",
        lines.len()
    );
}
