//! The store: a `200` survives restarts, `SIGKILL`, torn writes and a disk
//! that refuses writes. Real binaries on real folders, stopped with real
//! signals.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    paypush_command, paypush_sign, refused_at_start, spawn_app, start_binary, temp_dir, Binary,
    EventStream,
};

/// Connections sending callbacks at once in the flood tests.
const FLOOD_CONNECTIONS: u64 = 32;

/// Starts the binary in `dir` (its default data folder is `dir/paypush-data`).
async fn start_in(dir: &Path, flags: &[&str]) -> Binary {
    start_binary(paypush_command(dir), flags).await
}

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sends callbacks for fresh ids from many connections until the server
/// stops answering; returns every id answered `200` with its `completedAt`.
async fn flood(server: &Binary) -> Arc<Mutex<HashMap<u64, String>>> {
    let answered = Arc::new(Mutex::new(HashMap::new()));
    for connection in 0..FLOOD_CONNECTIONS {
        let base = server.url("/pay-callback?payRecordId=");
        let answered = answered.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in 1.. {
                let id = (connection + 1) * 1_000_000 + n;
                let Ok(response) = client.get(format!("{base}{id}")).send().await else {
                    return;
                };
                if response.status() != 200 {
                    continue;
                }
                let Ok(json) = response.json::<Value>().await else {
                    return;
                };
                let completed_at = json["completedAt"].as_str().unwrap_or_default();
                answered
                    .lock()
                    .unwrap()
                    .insert(id, completed_at.to_string());
            }
        });
    }
    answered
}

/// Every id answered `200` before is a duplicate now, with the same `completedAt`.
async fn assert_all_recorded(server: &Binary, answered: &HashMap<u64, String>) {
    let client = reqwest::Client::new();
    let ids: Vec<(u64, String)> = answered.iter().map(|(k, v)| (*k, v.clone())).collect();
    for chunk in ids.chunks(64) {
        let checks = chunk.iter().map(|(id, completed_at)| {
            let client = client.clone();
            let url = server.url(&format!("/pay-callback?payRecordId={id}"));
            async move {
                let json: Value = client
                    .get(url)
                    .send()
                    .await
                    .expect("callback")
                    .json()
                    .await
                    .expect("json");
                assert_eq!(json["duplicate"], true, "payment {id} was lost: {json}");
                assert_eq!(json["completedAt"], completed_at.as_str(), "payment {id}");
            }
        });
        futures_util::future::join_all(checks).await;
    }
}

/// Floods a server, stops it with `signal` at a random moment, restarts it
/// on the same folder and checks every callback that was answered `200`.
async fn every_200_survives(signal: &str, flags: &[&str]) {
    let dir = temp_dir();
    let mut server = start_in(dir.path(), flags).await;
    let answered = flood(&server).await;
    let moment = Duration::from_millis(300 + rand::random::<u64>() % 700);
    tokio::time::sleep(moment).await;
    server.stop(signal).await;
    // Let the flood's last answers (and refusals) arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() > 50,
        "the flood barely ran: {} answered",
        answered.len()
    );
    let server = start_in(dir.path(), flags).await;
    assert_all_recorded(&server, &answered).await;
}

#[tokio::test]
async fn every_callback_answered_200_survives_sigkill_in_a_flood() {
    every_200_survives("KILL", &[]).await;
}

#[tokio::test]
async fn every_callback_answered_200_survives_sigterm_in_a_flood() {
    every_200_survives("TERM", &[]).await;
}

#[tokio::test]
async fn durability_process_survives_sigkill_too() {
    every_200_survives("KILL", &["--durability", "process"]).await;
}

/// The outcome event of `/push` for `id`, read at once (no `pending`).
async fn recorded_event(server: &Binary, id: &str) -> (Option<String>, Value) {
    let response = reqwest::get(server.url(&format!("/push?payRecordId={id}")))
        .await
        .expect("push");
    let mut stream = EventStream::new(response);
    let event = stream.next_event().await.expect("an event");
    assert_eq!(event.event, None, "not the outcome: {event:?}");
    (event.id.clone(), event.json())
}

#[tokio::test]
async fn a_restart_serves_the_same_outcome_event_until_the_ttl_from_the_first_callback() {
    let dir = temp_dir();
    let flags = ["--outcome-ttl", "3s"];
    let mut server = start_in(dir.path(), &flags).await;
    let started = tokio::time::Instant::now();
    let (status, answer) = get(&server.url("/pay-callback?payRecordId=77")).await;
    assert_eq!(status, 200);
    let before = recorded_event(&server, "77").await;
    server.stop("TERM").await;

    let server = start_in(dir.path(), &flags).await;
    assert_eq!(recorded_event(&server, "77").await, before);
    assert_eq!(before.1["completedAt"], answer["completedAt"]);
    // Three seconds after the first callback, not after the restart.
    tokio::time::sleep_until(started + Duration::from_millis(3_500)).await;
    let response = reqwest::get(server.url("/push?payRecordId=77"))
        .await
        .unwrap();
    let mut stream = EventStream::new(response);
    let event = stream.next_event().await.expect("an event");
    assert_eq!(event.event.as_deref(), Some("pending"), "{event:?}");
}

#[tokio::test]
async fn a_restart_serves_the_outcome_to_status_and_websockets_too() {
    let dir = temp_dir();
    let mut server = start_in(dir.path(), &[]).await;
    let (_, answer) = get(&server.url("/pay-callback?payRecordId=78&status=CLOSED")).await;
    server.stop("TERM").await;

    let server = start_in(dir.path(), &[]).await;
    let (status, polled) = get(&server.url("/status?payRecordId=78")).await;
    assert_eq!(status, 200);
    assert_eq!(polled["status"], "CLOSED");
    assert_eq!(polled["completedAt"], answer["completedAt"]);
    let url = format!("ws://{}/ws?payRecordId=78", server.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    assert_eq!(crate::support::next_json(&mut socket).await, polled);
    assert_eq!(crate::support::next_close(&mut socket).await.0, 1000);
}

#[tokio::test]
async fn duplicates_and_conflicts_are_decided_the_same_after_a_restart() {
    let dir = temp_dir();
    let mut server = start_in(dir.path(), &[]).await;
    let url = |server: &Binary, status: &str| {
        server.url(&format!("/pay-callback?payRecordId=78&status={status}"))
    };
    assert_eq!(get(&url(&server, "FAILED")).await.0, 200);
    server.stop("KILL").await;

    let server = start_in(dir.path(), &[]).await;
    let (status, duplicate) = get(&url(&server, "FAILED")).await;
    assert_eq!((status, &duplicate["duplicate"]), (200, &Value::Bool(true)));
    let (status, conflict) = get(&url(&server, "SUCCESS")).await;
    assert_eq!(status, 409);
    assert_eq!(conflict["recordedStatus"], "FAILED");
}

#[tokio::test]
async fn a_signed_callback_replayed_after_a_restart_is_refused() {
    let dir = temp_dir();
    let secret = "store-test-secret";
    let command = || {
        let mut command = paypush_command(dir.path());
        command.env("PAYPUSH_CALLBACK_SECRET", secret);
        command
    };
    let path = "/pay-callback?payRecordId=79";
    let headers = paypush_sign(Some(secret), &["--path", path]);
    let send = |server: &Binary| {
        let mut request = reqwest::Client::new().get(server.url(path));
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let mut server = start_binary(command(), &[]).await;
    assert_eq!(send(&server).await.unwrap().status(), 200);
    server.stop("KILL").await;

    let server = start_binary(command(), &[]).await;
    let replay = send(&server).await.unwrap();
    assert_eq!(replay.status(), 401);
    let json: Value = replay.json().await.unwrap();
    assert!(
        json["message"].as_str().unwrap().contains("already used"),
        "{json}"
    );
}

/// The store's segment files in `dir`, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|path| path.extension().is_some_and(|ext| ext == "seg"));
    files.sort();
    files
}

/// Where a segment's records end: at the end of the file, or where the
/// zeros of a prepared segment start (a record's length is never 0).
fn records_end(bytes: &[u8]) -> usize {
    let mut offset = SEGMENT_MAGIC;
    while let Some(length) = bytes.get(offset..offset + 4) {
        let length = u32::from_le_bytes(length.try_into().unwrap()) as usize;
        if length == 0 || offset + 8 + length > bytes.len() {
            break;
        }
        offset += 8 + length;
    }
    offset
}

/// The segment whose last record is payment `id`'s outcome.
fn segment_ending_with(dir: &Path, id: u64) -> PathBuf {
    segments(dir)
        .into_iter()
        .find(|path| {
            let bytes = std::fs::read(path).unwrap();
            let end = records_end(&bytes);
            end >= SEGMENT_MAGIC + OUTCOME_RECORD && {
                let record = &bytes[end - OUTCOME_RECORD..end];
                record[9..17] == id.to_le_bytes()
            }
        })
        .expect("a segment ending with the outcome")
}

/// Records payments 1..=5 and stops with SIGKILL; returns the segment
/// that ends with payment 5 (prepared: zeros after the records).
async fn five_outcomes_then_sigkill(dir: &Path) -> PathBuf {
    let mut server = start_in(dir, &[]).await;
    for id in 1..=5 {
        let (status, _) = get(&server.url(&format!("/pay-callback?payRecordId={id}"))).await;
        assert_eq!(status, 200);
    }
    server.stop("KILL").await;
    segment_ending_with(&dir.join("paypush-data"), 5)
}

/// Records payments 1..=5, stops with SIGKILL, cuts the segment that ends
/// with payment 5 back to its records (as a segment that grows with each
/// write is), lets `damage` change it, restarts, and returns the new server.
async fn restart_after_damage(dir: &Path, damage: impl FnOnce(&Path)) -> Binary {
    let segment = five_outcomes_then_sigkill(dir).await;
    let end = records_end(&std::fs::read(&segment).unwrap());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(end as u64).unwrap();
    damage(&segment);
    start_in(dir, &[]).await
}

/// The sizes of the store's files in `folder`, by name.
fn file_sizes(folder: &Path) -> Vec<(String, u64)> {
    files_starting_with(folder, "")
        .iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            (name, std::fs::metadata(path).unwrap().len())
        })
        .collect()
}

#[tokio::test]
async fn segments_are_prepared_ahead_filled_with_zeros_and_trimmed_once_closed() {
    let dir = temp_dir();
    let folder = dir.path().join("paypush-data");
    let mut server = start_in(dir.path(), &[]).await;
    assert_eq!(get(&server.url("/pay-callback?payRecordId=1")).await.0, 200);
    // The segment written to, and the spare made for the next one: each
    // its whole capacity, the spare all zeros after its magic.
    let sizes = file_sizes(&folder);
    let segment_files: Vec<_> = sizes
        .iter()
        .filter(|(name, _)| name.ends_with(".seg"))
        .collect();
    let spares: Vec<_> = sizes
        .iter()
        .filter(|(name, _)| name.ends_with(".seg.prepared"))
        .collect();
    assert_eq!((segment_files.len(), spares.len()), (1, 1), "{sizes:?}");
    assert_eq!(segment_files[0].1, SEGMENT_CAPACITY, "{sizes:?}");
    assert_eq!(spares[0].1, SEGMENT_CAPACITY, "{sizes:?}");
    let spare = std::fs::read(folder.join(&spares[0].0)).unwrap();
    assert!(spare.starts_with(b"PAYPUSH1"));
    assert!(spare[SEGMENT_MAGIC..].iter().all(|&byte| byte == 0));
    assert_eq!(mode(&folder.join(&spares[0].0)), 0o600);
    // A clean stop trims the segment to its record and deletes the spare.
    server.stop("TERM").await;
    let sizes = file_sizes(&folder);
    let expected = [(
        segment_files[0].0.clone(),
        (SEGMENT_MAGIC + OUTCOME_RECORD) as u64,
    )];
    let store_files: Vec<_> = sizes
        .into_iter()
        .filter(|(name, _)| name != "LOCK")
        .collect();
    assert_eq!(store_files, expected);
}

#[tokio::test]
async fn a_prepared_segment_left_by_sigkill_is_read_to_its_last_record_without_a_warning() {
    let dir = temp_dir();
    let folder = dir.path().join("paypush-data");
    let segment = five_outcomes_then_sigkill(dir.path()).await;
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), SEGMENT_CAPACITY);
    let server = start_in(dir.path(), &[]).await;
    assert!(
        !server.logged().contains("WARN store"),
        "{}",
        server.logged()
    );
    assert!(!server.logged().contains("ERROR"), "{}", server.logged());
    for id in 1..=5 {
        assert!(is_duplicate(&server, id).await, "payment {id} was lost");
    }
    // Cut back to its records; the spare of the last run is gone.
    let length = std::fs::metadata(&segment).unwrap().len();
    assert_eq!(length, (SEGMENT_MAGIC + 5 * OUTCOME_RECORD) as u64);
    assert!(
        files_starting_with(&folder, "")
            .iter()
            .filter(|path| path.to_string_lossy().ends_with(".prepared"))
            .count()
            <= 1,
        "only the new run's spare"
    );
}

#[tokio::test]
async fn a_segment_still_under_its_prepared_name_after_a_crash_is_read() {
    // The rename of a spare to its segment name is not synced: after a
    // power cut, the records can be in a file still named `.prepared`.
    let dir = temp_dir();
    let segment = five_outcomes_then_sigkill(dir.path()).await;
    let mut prepared = segment.clone().into_os_string();
    prepared.push(".prepared");
    std::fs::rename(&segment, &prepared).unwrap();
    let server = start_in(dir.path(), &[]).await;
    for id in 1..=5 {
        assert!(is_duplicate(&server, id).await, "payment {id} was lost");
    }
    assert!(segment.exists(), "read under its segment name again");
}

#[tokio::test]
async fn a_last_record_left_half_zeros_in_a_prepared_segment_is_dropped_with_a_warning() {
    // A write cut short over a prepared segment leaves the record's end as
    // the zeros it was written over.
    let dir = temp_dir();
    let segment = five_outcomes_then_sigkill(dir.path()).await;
    let mut bytes = std::fs::read(&segment).unwrap();
    let end = records_end(&bytes);
    bytes[end - 13..end].fill(0);
    std::fs::write(&segment, bytes).unwrap();
    let server = start_in(dir.path(), &[]).await;
    assert!(
        server.logged().contains("record at byte"),
        "{}",
        server.logged()
    );
    for id in 1..=4 {
        assert!(is_duplicate(&server, id).await, "payment {id} was lost");
    }
    assert!(!is_duplicate(&server, 5).await, "the torn record came back");
}

async fn is_duplicate(server: &Binary, id: u64) -> bool {
    let (_, json) = get(&server.url(&format!("/pay-callback?payRecordId={id}"))).await;
    json["duplicate"] == true
}

#[tokio::test]
async fn garbage_after_the_last_record_is_dropped_with_a_warning() {
    let dir = temp_dir();
    let server = restart_after_damage(dir.path(), |segment| {
        let mut bytes = std::fs::read(segment).unwrap();
        bytes.extend_from_slice(&[0x13, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
        std::fs::write(segment, bytes).unwrap();
    })
    .await;
    assert!(server.logged().contains("WARN"), "{}", server.logged());
    assert!(
        server.logged().contains("record at byte"),
        "{}",
        server.logged()
    );
    for id in 1..=5 {
        assert!(is_duplicate(&server, id).await, "payment {id} was lost");
    }
}

#[tokio::test]
async fn a_last_record_cut_in_half_is_dropped_and_the_rest_kept() {
    let dir = temp_dir();
    let server = restart_after_damage(dir.path(), |segment| {
        let length = std::fs::metadata(segment).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(segment)
            .unwrap();
        file.set_len(length - 13).unwrap();
    })
    .await;
    assert!(
        server.logged().contains("torn record"),
        "{}",
        server.logged()
    );
    for id in 1..=4 {
        assert!(is_duplicate(&server, id).await, "payment {id} was lost");
    }
    assert!(!is_duplicate(&server, 5).await, "the torn record came back");
}

/// Bytes before the first record of a segment (its magic).
const SEGMENT_MAGIC: usize = 8;
/// The size of a prepared segment file.
const SEGMENT_CAPACITY: u64 = 1 << 20;
/// An outcome record: length and CRC (8 bytes), tag, id, status, time.
const OUTCOME_RECORD: usize = 8 + 1 + 8 + 1 + 8;

/// The files in `folder` whose names start with `prefix`.
fn files_starting_with(folder: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(prefix))
        })
        .collect();
    files.sort();
    files
}

/// Records payments 1..=5 (one segment of five outcome records), stops,
/// flips bit `bit` of byte `byte` of record `damaged` (1 to 5), restarts, and
/// checks that every other payment is still served, that a copy of the
/// damaged file lies beside it, and that an ERROR names the file and the
/// record's offset; then restarts again: no new copy, no new ERROR.
async fn a_flipped_bit_loses_only_its_record(damaged: u64, byte: usize, bit: u8) {
    let dir = temp_dir();
    let folder = dir.path().join("paypush-data");
    let mut server = start_in(dir.path(), &[]).await;
    let mut answered = HashMap::new();
    for id in 1..=5u64 {
        let (status, json) = get(&server.url(&format!("/pay-callback?payRecordId={id}"))).await;
        assert_eq!(status, 200);
        answered.insert(id, json["completedAt"].as_str().unwrap().to_string());
    }
    server.stop("TERM").await;
    let segment = segment_ending_with(&folder, 5);
    let mut bytes = std::fs::read(&segment).unwrap();
    assert_eq!(
        bytes.len(),
        SEGMENT_MAGIC + 5 * OUTCOME_RECORD,
        "one segment"
    );
    let offset = SEGMENT_MAGIC + (damaged as usize - 1) * OUTCOME_RECORD;
    bytes[offset + byte] ^= 1 << bit;
    std::fs::write(&segment, &bytes).unwrap();

    let mut server = start_in(dir.path(), &[]).await;
    let name = segment.file_name().unwrap().to_str().unwrap().to_string();
    let logged = server.logged();
    let error = logged
        .lines()
        .find(|line| line.contains("ERROR"))
        .unwrap_or_else(|| panic!("no ERROR:\n{logged}"));
    assert!(error.contains(&name), "{error}");
    assert!(error.contains(&format!("byte {offset}")), "{error}");
    let copies = files_starting_with(&folder, &format!("{name}.damaged-"));
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(std::fs::read(&copies[0]).unwrap(), bytes, "the copy");
    assert_eq!(mode(&copies[0]), 0o600, "the copy is private");
    let others: HashMap<u64, String> = answered
        .into_iter()
        .filter(|(id, _)| *id != damaged)
        .collect();
    for (id, completed_at) in &others {
        let (status, polled) = get(&server.url(&format!("/status?payRecordId={id}"))).await;
        assert_eq!(status, 200);
        assert_eq!(
            polled["status"], "SUCCESS",
            "payment {id} was lost: {polled}"
        );
        assert_eq!(polled["completedAt"], completed_at.as_str(), "payment {id}");
    }
    let (_, polled) = get(&server.url(&format!("/status?payRecordId={damaged}"))).await;
    assert_eq!(polled["status"], "PENDING", "the damaged record was read");
    assert_all_recorded(&server, &others).await;
    server.stop("TERM").await;

    let server = start_in(dir.path(), &[]).await;
    assert!(!server.logged().contains("ERROR"), "{}", server.logged());
    assert_eq!(
        files_starting_with(&folder, &format!("{name}.damaged-")),
        copies
    );
    assert_all_recorded(&server, &others).await;
}

#[tokio::test]
async fn a_flipped_bit_in_the_first_records_payload_loses_only_that_record() {
    // The lowest byte of the payment id.
    a_flipped_bit_loses_only_its_record(1, 9, 0).await;
}

#[tokio::test]
async fn a_flipped_bit_in_a_middle_records_checksum_loses_only_that_record() {
    a_flipped_bit_loses_only_its_record(2, 5, 3).await;
}

#[tokio::test]
async fn a_flipped_bit_in_a_middle_records_length_loses_only_that_record() {
    // 18 becomes 82: longer than any record.
    a_flipped_bit_loses_only_its_record(3, 0, 6).await;
}

#[tokio::test]
async fn a_middle_record_whose_length_reaches_past_the_end_is_not_a_torn_tail() {
    // 18 becomes 50: record 4 seems to end past the end of the file, as a
    // torn write does, but a valid record follows it.
    a_flipped_bit_loses_only_its_record(4, 0, 5).await;
}

#[tokio::test]
async fn a_flipped_bit_in_the_last_record_is_a_torn_tail_dropped_with_a_warning() {
    // Nothing valid follows it: it cannot be told from a write cut short.
    let dir = temp_dir();
    let server = restart_after_damage(dir.path(), |segment| {
        let mut bytes = std::fs::read(segment).unwrap();
        let last = bytes.len() - OUTCOME_RECORD;
        bytes[last + 12] ^= 0x10;
        std::fs::write(segment, bytes).unwrap();
    })
    .await;
    let logged = server.logged();
    assert!(logged.contains("WARN"), "{logged}");
    assert!(!logged.contains("ERROR"), "{logged}");
    let files = files_starting_with(&dir.path().join("paypush-data"), "");
    assert!(
        files
            .iter()
            .all(|path| !path.to_string_lossy().contains(".damaged-")),
        "a torn tail is cut as before, not kept: {files:?}"
    );
    for id in 1..=4 {
        assert!(is_duplicate(&server, id).await, "payment {id} was lost");
    }
    assert!(
        !is_duplicate(&server, 5).await,
        "the damaged record came back"
    );
}

#[tokio::test]
async fn copies_of_damaged_segments_are_bounded_and_leftovers_of_a_repair_deleted() {
    let dir = temp_dir();
    let folder = dir.path().join("paypush-data");
    folder_with_mode(&folder, 0o700);
    let segment = "00000000000000000001.seg";
    for millis in 1..=20 {
        std::fs::write(folder.join(format!("{segment}.damaged-{millis}")), b"x").unwrap();
    }
    std::fs::write(folder.join(format!("{segment}.repair")), b"PAYPUSH1").unwrap();
    let server = start_in(dir.path(), &[]).await;
    let kept: Vec<String> = files_starting_with(&folder, segment)
        .iter()
        .map(|path| path.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    // The eight newest copies, and no leftover of the repair.
    let newest: Vec<String> = (13..=20)
        .map(|millis| format!("{segment}.damaged-{millis}"))
        .collect();
    assert_eq!(kept, newest, "{}", server.logged());
}

#[tokio::test]
async fn a_store_that_cannot_write_answers_503_stays_up_and_loses_no_200() {
    let dir = temp_dir();
    // A file-size limit of 2 KiB, and SIGXFSZ left at its default (which
    // kills): paypush itself ignores it, so writes past the limit fail with
    // EFBIG and take the 503 path.
    let mut limited = tokio::process::Command::new("bash");
    limited
        .args(["-c", r#"trap - XFSZ; ulimit -f 2; exec "$0" "$@""#])
        .arg(env!("CARGO_BIN_EXE_paypush"))
        .current_dir(dir.path())
        .kill_on_drop(true);
    let mut server = start_binary(limited, &[]).await;
    let mut answered = HashMap::new();
    let mut refusal = None;
    for id in 1..=1_000u64 {
        let response = match reqwest::get(server.url(&format!("/pay-callback?payRecordId={id}")))
            .await
        {
            Ok(response) => response,
            Err(e) => {
                let exit = tokio::time::timeout(Duration::from_secs(2), server.child.wait()).await;
                panic!("callback {id} got no answer ({e}); paypush: {exit:?}");
            }
        };
        let (status, retry_after) = (
            response.status().as_u16(),
            response.headers().get("retry-after").cloned(),
        );
        let json: Value = response.json().await.unwrap();
        if status == 200 {
            answered.insert(id, json["completedAt"].as_str().unwrap().to_string());
        } else {
            refusal = Some((id, status, retry_after, json));
            break;
        }
    }
    let (refused, status, retry_after, json) = refusal.expect("the file-size limit is reached");
    assert_eq!(status, 503);
    assert!(retry_after.is_some());
    assert_eq!(json["error"], "unavailable", "{json}");
    assert!(answered.len() > 10, "only {} stored", answered.len());
    assert!(
        server.logged().contains("cannot prepare a segment"),
        "{}",
        server.logged()
    );
    let (ready, body) = get(&server.url("/readyz")).await;
    assert_eq!((ready, &body["error"]), (503, &Value::from("not_ready")));
    assert_eq!(get(&server.url("/healthz")).await.0, 200);
    assert!(server.child.try_wait().unwrap().is_none(), "it died");
    server.stop("TERM").await;

    let server = start_in(dir.path(), &[]).await;
    assert_all_recorded(&server, &answered).await;
    assert!(
        !is_duplicate(&server, refused).await,
        "the refused outcome came back"
    );
}

#[tokio::test]
async fn a_second_paypush_on_the_same_folder_exits_2_naming_it() {
    let dir = temp_dir();
    let _first = start_in(dir.path(), &[]).await;
    let mut second = paypush_command(dir.path());
    second.args(["--bind", "127.0.0.1:0"]);
    let stderr = refused_at_start(second).await;
    assert!(stderr.contains("paypush-data"), "{stderr}");
}

#[tokio::test]
async fn the_default_folder_is_created_private_and_in_memory_writes_nothing() {
    let dir = temp_dir();
    let mut server = start_in(dir.path(), &[]).await;
    assert!(
        server.logged().contains("durability disk"),
        "{}",
        server.logged()
    );
    let mode = std::fs::metadata(dir.path().join("paypush-data"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    server.stop("TERM").await;

    let memory = temp_dir();
    let mut server = start_in(memory.path(), &["--in-memory"]).await;
    assert_eq!(get(&server.url("/pay-callback?payRecordId=9")).await.0, 200);
    server.stop("TERM").await;
    let written: Vec<_> = std::fs::read_dir(memory.path()).unwrap().collect();
    assert!(written.is_empty(), "{written:?}");
}

#[tokio::test]
async fn expired_outcomes_leave_the_disk() {
    let app = spawn_app(&["--outcome-ttl", "1s"]).await;
    let folder = app
        .data_dir
        .as_ref()
        .expect("a data folder")
        .path()
        .to_path_buf();
    for id in 1..=20 {
        assert_eq!(app.callback(&id.to_string(), None).await.status(), 200);
    }
    assert!(app.metric("paypush_store_bytes").await > 0.0);
    assert!(!segments(&folder).is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !segments(&folder).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still on disk: {:?}",
            segments(&folder)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.metric("paypush_store_bytes").await, 0.0);
}

#[tokio::test]
async fn metrics_show_the_store_sync_latency() {
    let app = spawn_app(&[]).await;
    assert_eq!(app.callback("5", None).await.status(), 200);
    assert!(app.metric("paypush_store_sync_seconds_count").await >= 1.0);
}

#[tokio::test]
async fn a_signed_callback_answered_503_is_accepted_when_the_provider_retries_it() {
    let secret = "store-test-secret";
    let app = spawn_app(&[
        "--callback-secret",
        secret,
        "--max-outcomes",
        "1",
        "--outcome-ttl",
        "1s",
    ])
    .await;
    let send = |path: &'static str, headers: Vec<(String, String)>| {
        let mut request = app.client.get(app.url(path));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let (first, second) = (
        "/pay-callback?payRecordId=80",
        "/pay-callback?payRecordId=81",
    );
    let headers = paypush_sign(Some(secret), &["--path", first]);
    assert_eq!(send(first, headers).await.unwrap().status(), 200);
    let retried = paypush_sign(Some(secret), &["--path", second]);
    let full = send(second, retried.clone()).await.unwrap();
    assert_eq!(full.status(), 503, "over --max-outcomes");
    // Once the first outcome has expired there is room: the very same
    // signed request, retried, is not a replay.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(send(second, retried).await.unwrap().status(), 200);
}

#[tokio::test]
async fn over_max_outcomes_a_new_outcome_is_503_and_a_duplicate_still_200() {
    let app = spawn_app(&["--max-outcomes", "2"]).await;
    for id in ["1", "2"] {
        assert_eq!(app.callback(id, None).await.status(), 200);
    }
    let refused = app.callback("3", None).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let json: Value = refused.json().await.unwrap();
    assert_eq!(json["error"], "unavailable");
    assert!(
        json["message"].as_str().unwrap().contains("--max-outcomes"),
        "{json}"
    );
    let again: Value = app.callback("1", None).await.json().await.unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(app.metric("paypush_outcomes_refused_total").await, 1.0);
    assert_eq!(app.metric("paypush_outcomes_recorded").await, 2.0);
    // Nothing was evicted and nothing half-recorded: payment 3 is still open.
    let mut stream = app.push_pending("3").await;
    assert!(stream
        .next_within(Duration::from_millis(200))
        .await
        .is_err());
}

/// The permission bits of `path` (following a link).
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A folder at `path` with exactly `mode` (whatever the umask).
fn folder_with_mode(path: &Path, mode: u32) {
    std::fs::DirBuilder::new().create(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The binary in `dir`, started by a shell with umask 022 (files `0644`
/// unless paypush asks for less).
fn under_umask_022(dir: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("sh");
    command
        .args(["-c", r#"umask 022; exec "$0" "$@""#])
        .arg(env!("CARGO_BIN_EXE_paypush"))
        .current_dir(dir)
        .kill_on_drop(true);
    command
}

/// Every file in `folder` with its permission bits, in octal.
fn file_modes(folder: &Path) -> Vec<(String, String)> {
    files_starting_with(folder, "")
        .iter()
        .map(|path| (path.display().to_string(), format!("{:04o}", mode(path))))
        .collect()
}

#[tokio::test]
async fn an_existing_0755_folder_is_used_and_every_file_in_it_is_0600_under_umask_022() {
    let dir = temp_dir();
    let folder = dir.path().join("paypush-data");
    // Readable by others, not writable by them: the contract refuses only
    // a folder that group or others can write to.
    folder_with_mode(&folder, 0o755);
    let secret = "store-test-secret";
    let mut command = under_umask_022(dir.path());
    command.env("PAYPUSH_CALLBACK_SECRET", secret);
    let mut server = start_binary(command, &[]).await;
    for id in 1..=3 {
        let path = format!("/pay-callback?payRecordId={id}");
        let mut request = reqwest::Client::new().get(server.url(&path));
        for (name, value) in paypush_sign(Some(secret), &["--path", &path]) {
            request = request.header(name, value);
        }
        assert_eq!(request.send().await.unwrap().status(), 200);
    }
    server.stop("TERM").await;
    let files = file_modes(&folder);
    assert!(files.len() >= 2, "a segment and the lock: {files:?}");
    assert!(
        files.iter().all(|(_, mode)| mode == "0600"),
        "not private: {files:?}"
    );
    assert_eq!(mode(&folder), 0o755, "the folder is left as it was");
}

#[tokio::test]
async fn files_left_readable_by_an_older_paypush_are_made_private_at_start() {
    let dir = temp_dir();
    let folder = dir.path().join("paypush-data");
    let mut server = start_in(dir.path(), &[]).await;
    assert_eq!(
        get(&server.url("/pay-callback?payRecordId=31")).await.0,
        200
    );
    server.stop("TERM").await;
    for (file, _) in file_modes(&folder) {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = start_in(dir.path(), &[]).await;
    let files = file_modes(&folder);
    assert!(
        files.iter().all(|(_, mode)| mode == "0600"),
        "not private: {files:?}"
    );
    assert!(is_duplicate(&server, 31).await, "payment 31 was lost");
}

/// Starts paypush on `dir/paypush-data`, which must be refused: one line
/// naming each of `named` and `mode` (e.g. `0777`), and nothing written there.
async fn refused_for(dir: &Path, named: &[&str], mode: &str) {
    let mut command = paypush_command(dir);
    command.args(["--bind", "127.0.0.1:0"]);
    let stderr = refused_at_start(command).await;
    for name in named {
        assert!(stderr.contains(name), "does not name {name}: {stderr}");
    }
    assert!(stderr.contains(mode), "does not say {mode}: {stderr}");
    let written = file_modes(&dir.join("paypush-data"));
    assert!(written.is_empty(), "wrote {written:?}");
}

#[tokio::test]
async fn a_folder_group_or_others_can_write_to_is_refused_naming_it_and_its_mode() {
    for mode in [0o775, 0o777, 0o1777, 0o720, 0o702] {
        let dir = temp_dir();
        let folder = dir.path().join("paypush-data");
        folder_with_mode(&folder, mode);
        refused_for(dir.path(), &["paypush-data"], &format!("{mode:04o}")).await;
    }
}

#[tokio::test]
async fn a_link_to_a_world_writable_folder_is_refused_and_a_link_to_a_private_one_used() {
    let dir = temp_dir();
    let open = dir.path().join("open");
    folder_with_mode(&open, 0o777);
    std::os::unix::fs::symlink(&open, dir.path().join("paypush-data")).unwrap();
    let target = open.canonicalize().unwrap().display().to_string();
    refused_for(dir.path(), &["paypush-data", &target], "0777").await;

    let private = temp_dir();
    let folder = private.path().join("kept");
    folder_with_mode(&folder, 0o700);
    std::os::unix::fs::symlink(&folder, private.path().join("paypush-data")).unwrap();
    let mut server = start_in(private.path(), &[]).await;
    assert_eq!(
        get(&server.url("/pay-callback?payRecordId=32")).await.0,
        200
    );
    server.stop("TERM").await;
    assert!(
        !segments(&folder).is_empty(),
        "nothing stored behind the link"
    );
}

#[tokio::test]
async fn a_folder_owned_by_another_user_is_refused() {
    let dir = temp_dir();
    if std::fs::metadata(dir.path()).unwrap().uid() != 0 {
        println!("skipped: only root can give a folder to another user (uid 65534)");
        return;
    }
    let folder = dir.path().join("paypush-data");
    folder_with_mode(&folder, 0o700);
    std::os::unix::fs::chown(&folder, Some(65534), Some(65534)).unwrap();
    refused_for(dir.path(), &["paypush-data", "65534"], "0700").await;
}
