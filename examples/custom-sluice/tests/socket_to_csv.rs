//! The kit as a user runs it: its binary, a pipeline from the Unix-socket line source into the
//! CSV-file sink, a writer that counts only the lines the source acknowledged.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads `ok <n>` answers until `stop` says enough or the socket closes; the last n.
fn acknowledged(answers: &mut impl BufRead, stop: impl Fn(u64) -> bool) -> u64 {
    let mut last = 0;
    let mut line = String::new();
    loop {
        line.clear();
        match answers.read_line(&mut line) {
            Ok(0) | Err(_) => return last,
            Ok(_) => {
                last = line.trim().strip_prefix("ok ").unwrap().parse().unwrap();
                if stop(last) {
                    return last;
                }
            }
        }
    }
}

fn stop(child: &mut Child) -> String {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{stderr}");
    stderr
}

fn rows(csv: &Path) -> Vec<String> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn acknowledged_lines_land_in_the_csv_file_once_each_across_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("in.sock");
    let csv = dir.path().join("out/lines.csv");
    let pipeline = dir.path().join("kit.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: kit\nsources:\n  socket:\n    type: unix_socket_lines\n    path: {}\n    topic: lines\nsinks:\n  table:\n    type: csv_file\n    topics: [lines]\n    path: {}\n    columns: [line]\n",
            socket.display(),
            csv.display()
        ),
    )
    .unwrap();
    let mut sluice = Command::new(env!("CARGO_BIN_EXE_custom-sluice"))
        .arg("run")
        .arg(&pipeline)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the socket", Duration::from_secs(20), || socket.exists());

    // A writer that waits for its lines to be acknowledged.
    let mut first = UnixStream::connect(&socket).unwrap();
    for n in 0..10_000 {
        writeln!(first, "line {n}, with a comma").unwrap();
    }
    first.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answers = BufReader::new(first.try_clone().unwrap());
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(acknowledged(&mut answers, |n| n == 10_000), 10_000);

    // A writer still writing when sluice is stopped: what it was told is stored is in the
    // file, and nothing more, nothing twice.
    let mut second = UnixStream::connect(&socket).unwrap();
    for n in 0..5_000 {
        writeln!(second, "late {n}").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let stderr = stop(&mut sluice);
    let mut answers = BufReader::new(second);
    let late = acknowledged(&mut answers, |_| false);

    let rows = rows(&csv);
    assert_eq!(rows[0], "line", "the header");
    let body = &rows[1..];
    let mut distinct = body.to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), body.len(), "a row was written twice");
    assert_eq!(body.len() as u64, 10_000 + late, "{stderr}");
    assert_eq!(body[0], "\"line 0, with a comma\"");
    assert!(
        late > 0,
        "the late writer's lines read before the stop were stored"
    );
}
