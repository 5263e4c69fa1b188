//! Interoperability with RabbitMQ tutorial 6, both ways.
//!
//! The tutorial peers here are written with plain amiquip calls and set nothing but what the
//! tutorials set: `reply_to` and `correlation_id` on requests, `correlation_id` on replies.

use amiquip::{
    AmqpProperties, AmqpValue, ConsumerMessage, ConsumerOptions, FieldTable, Publish,
    QueueDeclareOptions,
};
use crossbeam_channel::Receiver;
use fib_rpc::services::fibonacci;
use std::thread::JoinHandle;
use std::time::Duration;
use support::TestQueue;

const TIMEOUT: Duration = Duration::from_secs(5);

/// How the tutorial server declares its queue.
#[derive(Clone, Copy)]
enum TutorialDeclare {
    /// Today's tutorials: durable, `x-queue-type: quorum`.
    Quorum,
    /// Older tutorials: a plain, non-durable classic queue.
    ClassicTransient,
}

/// The tutorial's server: declare, prefetch 1, consume, reply with the correlation id, ack.
/// Returns how many requests it answered once `stop` disconnects.
fn tutorial_server(queue: &str, declare: TutorialDeclare, stop: Receiver<()>) -> JoinHandle<u64> {
    let queue = queue.to_owned();
    let (ready_sender, ready) = crossbeam_channel::bounded(1);
    let thread = std::thread::spawn(move || {
        let mut connection = support::raw_connection();
        let channel = connection.open_channel(None).unwrap();
        let options = match declare {
            TutorialDeclare::Quorum => {
                let mut arguments = FieldTable::new();
                arguments.insert(
                    "x-queue-type".into(),
                    AmqpValue::LongString("quorum".into()),
                );
                QueueDeclareOptions {
                    durable: true,
                    arguments,
                    ..QueueDeclareOptions::default()
                }
            }
            TutorialDeclare::ClassicTransient => QueueDeclareOptions::default(),
        };
        let rpc_queue = channel.queue_declare(queue.as_str(), options).unwrap();
        channel.qos(0, 1, false).unwrap();
        let consumer = rpc_queue.consume(ConsumerOptions::default()).unwrap();
        ready_sender.send(()).unwrap();
        let mut served = 0;
        loop {
            crossbeam_channel::select! {
                recv(consumer.receiver()) -> message => {
                    let Ok(ConsumerMessage::Delivery(delivery)) = message else { break };
                    let n: u64 = std::str::from_utf8(&delivery.body).unwrap().parse().unwrap();
                    let response = fibonacci(n).to_string();
                    let properties = AmqpProperties::default()
                        .with_correlation_id(delivery.properties.correlation_id().clone().unwrap());
                    let reply_to = delivery.properties.reply_to().clone().unwrap();
                    channel
                        .basic_publish("", Publish::with_properties(response.as_bytes(), reply_to, properties))
                        .unwrap();
                    consumer.ack(delivery).unwrap();
                    served += 1;
                }
                recv(stop) -> _ => break,
            }
        }
        support::close_raw(connection, consumer);
        served
    });
    ready
        .recv_timeout(TIMEOUT)
        .expect("the tutorial server started");
    thread
}

/// The tutorial's client: exclusive callback queue, publish with reply_to and correlation_id,
/// wait for the reply with that id.
fn tutorial_call(queue: &str, n: u64) -> String {
    let mut connection = support::raw_connection();
    let channel = connection.open_channel(None).unwrap();
    let callback = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
        )
        .unwrap();
    let consumer = callback
        .consume(ConsumerOptions {
            no_ack: true,
            ..ConsumerOptions::default()
        })
        .unwrap();
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let properties = AmqpProperties::default()
        .with_reply_to(callback.name().to_owned())
        .with_correlation_id(correlation_id.clone());
    channel
        .basic_publish(
            "",
            Publish::with_properties(n.to_string().as_bytes(), queue, properties),
        )
        .unwrap();
    let body = loop {
        match consumer
            .receiver()
            .recv_timeout(TIMEOUT)
            .expect("a reply in time")
        {
            ConsumerMessage::Delivery(delivery)
                if delivery.properties.correlation_id().as_deref() == Some(&correlation_id) =>
            {
                break delivery.body
            }
            ConsumerMessage::Delivery(_) => continue,
            other => panic!("callback queue closed: {other:?}"),
        }
    };
    connection.close().unwrap();
    drop(consumer);
    String::from_utf8(body).unwrap()
}

#[test]
fn our_client_calls_a_tutorial_server_that_declared_the_quorum_queue_first() {
    let queue = TestQueue::new("interop-tutorial-server");
    let (stop_sender, stop) = crossbeam_channel::bounded(0);
    let server = tutorial_server(&queue.name, TutorialDeclare::Quorum, stop);
    let client = support::fib_client(&queue.name, TIMEOUT);
    for n in [0u64, 1, 10, 50, 93] {
        assert_eq!(client.call(n).unwrap(), fibonacci(n));
    }
    client.close().unwrap();
    drop(stop_sender);
    assert_eq!(server.join().unwrap(), 5);
}

#[test]
fn a_tutorial_client_calls_our_server_and_a_tutorial_server_joins_our_quorum_queue() {
    let queue = TestQueue::new("interop-tutorial-client");
    let ours = support::start_fib_server(&queue.name, 1);
    assert_eq!(tutorial_call(&queue.name, 10), "55");
    assert_eq!(tutorial_call(&queue.name, 90), fibonacci(90).to_string());
    // The tutorial server declares the queue our server declared: same arguments, no conflict.
    let (stop_sender, stop) = crossbeam_channel::bounded(0);
    let theirs = tutorial_server(&queue.name, TutorialDeclare::Quorum, stop);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let name = queue.name.clone();
            std::thread::spawn(move || {
                for n in 0..10 {
                    assert_eq!(tutorial_call(&name, n), fibonacci(n).to_string());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    drop(stop_sender);
    let served_by_theirs = theirs.join().unwrap();
    assert_eq!(ours.stats().total() + served_by_theirs, 42);
    ours.shutdown().unwrap();
}

#[test]
fn our_server_uses_a_queue_an_old_tutorial_declared_differently() {
    let queue = TestQueue::new("interop-classic");
    let (stop_sender, stop) = crossbeam_channel::bounded(0);
    let theirs = tutorial_server(&queue.name, TutorialDeclare::ClassicTransient, stop);
    // Our quorum declaration conflicts (406); the server must warn and serve the queue as it is.
    let ours = support::start_fib_server(&queue.name, 1);
    let client = support::fib_client(&queue.name, TIMEOUT);
    for n in 0..20 {
        assert_eq!(client.call(n).unwrap(), fibonacci(n));
    }
    drop(stop_sender);
    let served_by_theirs = theirs.join().unwrap();
    assert_eq!(ours.stats().total() + served_by_theirs, 20);
    assert!(
        ours.stats().total() > 0,
        "our server never served the shared queue"
    );
    ours.shutdown().unwrap();
}

/// One of RabbitMQ's own Python tutorial programs in `tests/pika` (pika, Debian's
/// python3-pika, which scripts/deps.sh installs).
fn pika(script: &str) -> std::process::Command {
    let mut command = std::process::Command::new("/usr/bin/python3");
    command.arg(format!(
        "{}/tests/pika/{script}",
        env!("CARGO_MANIFEST_DIR")
    ));
    command
}

#[test]
fn the_pika_tutorial_client_gets_exactly_the_reply_of_a_handler_that_reports_progress() {
    let queue = TestQueue::new("pika-client");
    let server = fib_rpc::RpcServer::new(
        support::server_config(&queue.name, 1),
        fib_rpc::handler::with_request(|request: &fib_rpc::Request<'_>| {
            request.progress(Some(0.5), "half way");
            let n = fib_rpc::services::parse_bounded_u64(request.body(), 1000)?;
            Ok::<_, fib_rpc::HandlerError>(fibonacci(n).to_string().into_bytes())
        }),
    )
    .start()
    .unwrap();
    let output = pika("rpc_client.py")
        .args([&support::amqp_url(), &queue.name, "30"])
        .output()
        .expect("run the pika tutorial client");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "832040\n");
    assert_eq!(server.stats().answered, 1);
    server.shutdown().unwrap();
}

#[test]
fn our_client_calls_the_pika_tutorial_server_with_and_without_the_options_it_ignores() {
    use std::io::BufRead;
    let queue = TestQueue::new("pika-server");
    let mut server = pika("rpc_server.py")
        .args([&support::amqp_url(), &queue.name])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the pika tutorial server");
    let mut ready = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    let client = support::fib_client(&queue.name, TIMEOUT);
    assert_eq!(client.call(30).unwrap(), fibonacci(30));
    // Progress asked for, a header and a trace: the tutorial server answers all the same.
    let reply = client
        .rpc()
        .request(&queue.name, b"40")
        .on_progress(|_| {})
        .header("tenant", "acme")
        .trace(fib_rpc::TraceContext::new_root())
        .call()
        .unwrap();
    assert_eq!(reply.body(), fibonacci(40).to_string().as_bytes());
    let _ = server.kill();
    let _ = server.wait();
}
