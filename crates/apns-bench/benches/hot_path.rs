//! The worker's pure per-job path, timed stage by stage without any I/O: decode a job
//! (the `apns-bench bench` body: ~1 KB payload), build its request headers, and
//! parse and classify a 200 answer. `cargo bench --bench hot_path -- [jobs]` prints
//! ns per job for each stage; run it under `valgrind --tool=callgrind` for
//! instruction counts that do not move with the machine's load.
//!
//! Under `cargo test` (no `--bench` argument) it runs a small smoke round, so the
//! target is checked to build and run without taking the suite's time.

use std::hint::black_box;
use std::time::Instant;

use apns::ApnsResponse;
use apns::classify::{Context, classify};
use apns_bench::bench::job_body;
use apns_worker::job::{self, AppDirectory, AppEntry, Envelope};
use bytes::Bytes;
use http::HeaderValue;
use http::uri::Authority;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let jobs: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(if benching { 200_000 } else { 1_000 });

    let apps = AppDirectory::new(vec![AppEntry {
        name: "bench".into(),
        topics: vec!["com.example.bench".into()],
        default_topic: Some("com.example.bench".into()),
        key_topics: None,
    }]);
    let bodies: Vec<Bytes> = (0..jobs as u64)
        .map(|i| Bytes::from(job_body(i, 1024, &format!("job-{i}"))))
        .collect();
    let env = Envelope {
        content_type: Some("application/json"),
        ..Default::default()
    };
    let authority = Authority::from_static("api.push.apple.com");
    let auth = HeaderValue::from_static(
        "bearer eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQzEyMzRERUYifQ.eyJpc3MiOiJERUYxMjNHSElKIiwiaWF0IjoxNzAwMDAwMDAwfQ.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmUtc2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU",
    );

    let t = Instant::now();
    let decoded: Vec<job::Job> = bodies
        .iter()
        .map(|b| job::decode(b, &env, &apps, 65_536).expect("bench jobs are valid"))
        .collect();
    let decode_ns = t.elapsed().as_nanos() as f64 / jobs as f64;

    let t = Instant::now();
    for j in &decoded {
        black_box(j.notification.request(&authority, Some(&auth)));
    }
    let request_ns = t.elapsed().as_nanos() as f64 / jobs as f64;

    let t = Instant::now();
    for j in &decoded {
        let id = j.apns_id().map(|u| u.to_string());
        let resp = ApnsResponse::from_parts(200, id, None, b"");
        black_box(classify(
            &resp,
            Context {
                can_refresh_token: true,
            },
        ));
    }
    let answer_ns = t.elapsed().as_nanos() as f64 / jobs as f64;

    println!(
        "hot_path: {jobs} jobs of {} bytes: decode {decode_ns:.0} ns, request {request_ns:.0} ns, \
         answer+classify {answer_ns:.0} ns per job",
        bodies[0].len()
    );
}
