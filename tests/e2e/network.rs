//! Failing safely on a bad network day: servers of our own on loopback that
//! redirect, so that nothing fhirlift sends can leave the machine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fhirlift_tests::{fhirlift, scratch};

/// A listener that counts the connections it accepts and answers nothing.
fn counting_listener() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counted.fetch_add(1, Ordering::Relaxed);
            drop(stream);
        }
    });
    (url, hits)
}

/// A server answering every request `307` to the same path on `to`.
fn redirecting_server(to: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let to = to.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    // the request head, then its body by Content-Length
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}{path}\r\nContent-Length: 0\r\n\r\n"
                    );
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// Regression: a 307 to another host was followed and the request body
/// (patient data) sent there. A redirect is not followed: the run stops,
/// naming it, and the other host sees no connection.
#[test]
fn a_redirect_to_another_host_is_not_followed_and_stops_the_run() {
    let (elsewhere, hits) = counting_listener();
    let server = redirecting_server(elsewhere);
    let dir = scratch("network-redirect");
    std::fs::write(
        dir.join("migration.yaml"),
        r#"source: { connector: csv, path: . }
streams:
  patients:
    from: patients.csv
    key: id
    emit:
      - resourceType: Patient
        identifier: [{ system: "http://clinic.example/patientId", value: "{{ id }}" }]
        name: [{ family: "{{ family }}" }]
"#,
    )
    .unwrap();
    let mut csv = String::from("id,family\n");
    for i in 0..300 {
        csv.push_str(&format!("P{i},Family{i}\n"));
    }
    std::fs::write(dir.join("patients.csv"), csv).unwrap();
    let run = fhirlift([
        "migrate".into(),
        "-c".into(),
        dir.join("migration.yaml").into_os_string(),
        "--server".into(),
        format!("{server}/fhir/R4").into(),
        "--profile".into(),
        "generic".into(),
        "--state".into(),
        dir.join("fhirlift.state").into_os_string(),
    ]);
    assert_ne!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("does not follow redirects"), "{all}");
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "nothing reached the other host"
    );
}
