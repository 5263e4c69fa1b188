//! Long calls: progress while a job runs, an idle timeout, and cancellation when the caller
//! gives up, against the real broker.

use fib_rpc::{handler, HandlerError, Progress, Request, RpcServer, ServerHandle, Stage};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::TestQueue;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Progress reports as a call's callback saw them.
type Seen = Arc<Mutex<Vec<Progress>>>;

fn recorder() -> (Seen, impl FnMut(&Progress) + Send + 'static) {
    let seen = Seen::default();
    let record = Arc::clone(&seen);
    (seen, move |progress: &Progress| {
        record.lock().unwrap().push(progress.clone())
    })
}

#[test]
fn progress_arrives_in_order_before_the_reply() {
    let queue = TestQueue::new("progress");
    let server = RpcServer::new(
        support::server_config(&queue.name, 1),
        handler::with_request(|request: &Request<'_>| {
            for step in 1..=4 {
                request.progress(Some(f64::from(step) / 4.0), &format!("step {step}"));
            }
            let answer: &[u8] = match request.wants_progress() {
                true => b"done",
                false => b"done, quietly",
            };
            Ok::<_, HandlerError>(answer.to_vec())
        }),
    )
    .start()
    .unwrap();
    let client = support::client();
    let (seen, on_progress) = recorder();
    let reply = client
        .request(&queue.name, b"job")
        .on_progress(on_progress)
        .call()
        .unwrap();
    assert_eq!(reply.body(), b"done");
    let seen = seen.lock().unwrap();
    let steps: Vec<(Option<f64>, &str)> =
        seen.iter().map(|p| (p.fraction(), p.message())).collect();
    assert_eq!(
        steps,
        [
            (Some(0.25), "step 1"),
            (Some(0.5), "step 2"),
            (Some(0.75), "step 3"),
            (Some(1.0), "step 4")
        ]
    );
    // A call that did not ask sees the reply alone, as a tutorial client would.
    assert_eq!(client.call(&queue.name, b"job").unwrap(), b"done, quietly");
    server.shutdown().unwrap();
}

#[test]
fn a_tutorial_client_gets_exactly_the_reply_of_a_handler_that_reports_progress() {
    let queue = TestQueue::new("progress-tutorial");
    let server = RpcServer::new(
        support::server_config(&queue.name, 1),
        handler::with_request(|request: &Request<'_>| {
            request.progress(Some(0.5), "half way");
            Ok::<_, HandlerError>(b"832040".to_vec())
        }),
    )
    .start()
    .unwrap();
    let peer = support::RawPeer::connect();
    peer.publish(&queue.name, b"30", peer.request_properties("tutorial-1"));
    let (properties, body) = peer.next_reply(TIMEOUT).expect("a reply");
    assert_eq!(body, b"832040");
    assert_eq!(properties.type_(), &None);
    // The reply was the only message: the next call's reply is the next one there.
    peer.publish(&queue.name, b"30", peer.request_properties("tutorial-2"));
    let (properties, _) = peer.next_reply(TIMEOUT).expect("a second reply");
    assert_eq!(properties.correlation_id().as_deref(), Some("tutorial-2"));
    server.shutdown().unwrap();
}

#[test]
fn an_idle_timeout_outlasts_a_job_that_reports_and_fails_fast_on_one_that_goes_silent() {
    let queue = TestQueue::new("idle");
    let (release, released) = crossbeam_channel::bounded::<()>(0);
    let server = RpcServer::new(
        support::server_config(&queue.name, 2),
        handler::with_request(move |request: &Request<'_>| {
            match request.body() {
                // Ten seconds of work, reported every second.
                b"steady" => {
                    for second in 1..=10 {
                        std::thread::sleep(Duration::from_secs(1));
                        request.progress(Some(f64::from(second) / 10.0), "");
                    }
                }
                // One report, then silence until the test ends.
                _ => {
                    request.progress(Some(0.1), "started");
                    let _ = released.recv();
                }
            }
            Ok::<_, HandlerError>(request.body().to_vec())
        }),
    )
    .start()
    .unwrap();
    let client = support::client();
    let (seen, on_progress) = recorder();
    let steady = client
        .request(&queue.name, b"steady")
        .timeout(Duration::from_secs(60))
        .idle_timeout(Duration::from_secs(3))
        .on_progress(on_progress)
        .call()
        .unwrap();
    assert_eq!(steady.body(), b"steady");
    assert_eq!(seen.lock().unwrap().len(), 10);
    let started = Instant::now();
    let error = support::within(
        Duration::from_secs(1),
        "a silent job's idle timeout",
        || {
            client
                .request(&queue.name, b"silent")
                .timeout(Duration::from_secs(60))
                .idle_timeout(Duration::from_secs(1))
                .on_progress(|_| {})
                .call()
                .unwrap_err()
        },
    );
    assert!(started.elapsed() >= Duration::from_secs(1), "not before it");
    match &error {
        fib_rpc::Error::Timeout { stage, timeout, .. } => {
            assert_eq!(
                (*stage, *timeout),
                (Stage::Progress, Duration::from_secs(1))
            );
        }
        other => panic!("{other}"),
    }
    drop(release);
    server.shutdown().unwrap();
}

/// A server whose handler works until its caller gives up (at most 30 s).
struct Cancellable {
    server: ServerHandle,
    /// Hears of each job that began.
    started: crossbeam_channel::Receiver<()>,
    /// When the handler saw each cancel.
    cancelled_at: Arc<Mutex<Vec<Instant>>>,
    /// Jobs begun.
    runs: Arc<AtomicUsize>,
}

fn cancellable_server(queue: &str) -> Cancellable {
    let (started_sender, started) = crossbeam_channel::unbounded();
    let cancelled_at = Arc::new(Mutex::new(Vec::new()));
    let runs = Arc::new(AtomicUsize::new(0));
    let (record, counted) = (Arc::clone(&cancelled_at), Arc::clone(&runs));
    let server = RpcServer::new(
        support::server_config(queue, 1),
        handler::with_request(move |request: &Request<'_>| {
            if request.body() == b"quick" {
                return Ok(b"quick".to_vec());
            }
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = started_sender.send(());
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                if request.is_cancelled() {
                    record.lock().unwrap().push(Instant::now());
                    return Err(HandlerError::new("cancelled"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok::<_, HandlerError>(b"finished".to_vec())
        }),
    )
    .start()
    .unwrap();
    Cancellable {
        server,
        started,
        cancelled_at,
        runs,
    }
}

#[test]
fn a_cancelled_job_stops_within_a_second_and_the_server_serves_the_next() {
    let queue = TestQueue::new("cancel");
    let Cancellable {
        server,
        started,
        cancelled_at,
        ..
    } = cancellable_server(&queue.name);
    let client = support::client();
    // By cancel(), by the call's timeout, and by dropping the pending call.
    for how in ["cancel", "timeout", "drop"] {
        let pending = client
            .request(&queue.name, b"long")
            .timeout(match how {
                "timeout" => Duration::from_millis(500),
                _ => Duration::from_secs(60),
            })
            .send()
            .unwrap();
        started.recv_timeout(TIMEOUT).expect("the job started");
        let gave_up = Instant::now();
        match how {
            "cancel" => pending.cancel(),
            "timeout" => assert!(pending.wait().unwrap_err().is_timeout()),
            _ => drop(pending),
        }
        support::wait_until("the handler sees the cancel", TIMEOUT, || {
            cancelled_at.lock().unwrap().len() == 1
        });
        let seen = cancelled_at.lock().unwrap().pop().unwrap();
        assert!(
            seen.duration_since(gave_up) < Duration::from_secs(1),
            "{how}: the handler saw the cancel {:?} after the caller gave up",
            seen.duration_since(gave_up)
        );
        assert_eq!(
            client.call(&queue.name, b"quick").unwrap(),
            b"quick",
            "{how}"
        );
    }
    let stats = server.stats();
    assert_eq!((stats.cancelled, stats.error_replies), (3, 0), "{stats:?}");
    assert_eq!(queue.counts(), (0, 1), "each cancelled job acked, once");
    server.shutdown().unwrap();
}

#[test]
fn a_request_cancelled_while_queued_is_never_computed() {
    let queue = TestQueue::new("cancel-queued");
    let Cancellable {
        server,
        started,
        runs,
        ..
    } = cancellable_server(&queue.name);
    let client = support::client();
    // The one worker is busy with the first job; the second waits in the queue.
    let first = client.send(&queue.name, b"first").unwrap();
    started
        .recv_timeout(TIMEOUT)
        .expect("the first job started");
    let second = client.send(&queue.name, b"second").unwrap();
    support::wait_until("the second request is queued", TIMEOUT, || {
        queue.counts().0 == 1
    });
    second.cancel();
    support::wait_until("the server heard the cancel", TIMEOUT, || {
        server.stats().cancels_received == 1
    });
    first.cancel();
    support::wait_until("both requests are done with", TIMEOUT, || {
        server.stats().cancelled == 2
    });
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the second was never computed"
    );
    assert_eq!(queue.counts(), (0, 1));
    assert_eq!(client.call(&queue.name, b"quick").unwrap(), b"quick");
    server.shutdown().unwrap();
}
