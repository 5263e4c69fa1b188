//! Private RabbitMQ nodes (scripts/nodes.sh) for the tests that stop, restart or partition a
//! broker: those tests must never touch the shared broker at `amqp_url()`, which every other
//! test uses at the same time.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A private RabbitMQ node started by scripts/nodes.sh, for tests that stop or restart brokers.
pub struct PrivateNode {
    pub name: String,
    pub port: u16,
}

/// How many nodes this test process has made sure of so far.
static STARTED: Mutex<usize> = Mutex::new(0);

/// Private nodes 1..=n (node 1 first; nodes 2..n clustered with it), started by
/// `scripts/nodes.sh start n` unless this test process already did. The script does nothing
/// when they already run (as scripts/test.sh starts them); `scripts/nodes.sh stop` removes
/// them. Panics with the script's output if it fails: a test that needs them never skips.
pub fn private_nodes(n: usize) -> Vec<PrivateNode> {
    assert!(
        (1..=3).contains(&n),
        "scripts/nodes.sh runs 1 to 3 nodes, not {n}"
    );
    let mut started = STARTED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if *started < n {
        run_nodes_script(&["start", &n.to_string()]);
        *started = n;
    }
    (1..=n)
        .map(|i| PrivateNode {
            name: format!("fibrpc{i}@localhost"),
            port: 5680 + i as u16,
        })
        .collect()
}

/// The private node configured as production brokers are (scripts/nodes.sh limits): a
/// consumer timeout of 3 s, a max_message_size of 1 MiB, and the user `limited` (password
/// `limited`) without configure permission. Started unless it runs; never clustered.
pub fn limits_node() -> PrivateNode {
    static STARTED: Mutex<bool> = Mutex::new(false);
    let mut started = STARTED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !*started {
        run_nodes_script(&["limits"]);
        *started = true;
    }
    PrivateNode {
        name: "fibrpc4@localhost".to_owned(),
        port: 5684,
    }
}

/// Runs scripts/nodes.sh with `args`; panics with its output if it fails.
fn run_nodes_script(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nodes.sh");
    let output = Command::new(&script)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
    assert!(
        output.status.success(),
        "`scripts/nodes.sh {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PrivateNode {
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The node's URL for another user.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", self.port)
    }

    /// `rabbitmqctl -q -n NODE ARGS` on this node; its output.
    pub fn ctl(&self, args: &[&str]) -> String {
        super::rabbitmqctl(Some(&self.name), args)
    }

    /// Stops the RabbitMQ application on this node (the Erlang VM stays up), which closes every
    /// connection to it.
    pub fn stop_app(&self) {
        self.rabbitmqctl("stop_app")
            .unwrap_or_else(|error| panic!("{error}"));
    }

    pub fn start_app(&self) {
        self.rabbitmqctl("start_app")
            .unwrap_or_else(|error| panic!("{error}"));
    }

    /// [`PrivateNode::start_app`] for a drop guard, which must not panic while a failing test
    /// unwinds (that would abort the test process).
    pub fn try_start_app(&self) -> Result<(), String> {
        self.rabbitmqctl("start_app")
    }

    /// The node that holds the leader of quorum queue `queue`, as this node sees it.
    pub fn queue_leader(&self, queue: &str) -> Option<String> {
        let listing = super::rabbitmqctl(Some(&self.name), &["list_queues", "name", "leader"]);
        super::listed(&listing, queue).map(str::to_owned)
    }

    /// Messages ready in `queue`, as this node sees them; `None` if it lists no such queue.
    pub fn messages(&self, queue: &str) -> Option<u32> {
        let listing = super::rabbitmqctl(Some(&self.name), &["list_queues", "name", "messages"]);
        super::listed(&listing, queue)?.parse().ok()
    }

    /// Closes, from this node's side, every connection whose client properties contain
    /// `needle`; returns how many.
    pub fn close_connections(&self, needle: &str) -> usize {
        super::close_connections_on(Some(&self.name), needle)
    }

    /// Always with `-n`: rabbitmqctl without it would act on the shared broker.
    fn rabbitmqctl(&self, action: &str) -> Result<(), String> {
        let output = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.name, action])
            .output()
            .map_err(|error| {
                format!("cannot run rabbitmqctl, needed for the tests on private nodes: {error}")
            })?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "rabbitmqctl -n {} {action} failed ({}):\n{}{}",
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Tests that stop, restart or partition private nodes take this for writing, those that use
/// them as they are for reading: within one test binary, no test meets a node another stopped.
static NODES_IN_USE: RwLock<()> = RwLock::new(());

/// Held by a test that stops, restarts or partitions private nodes, alone among the tests of
/// its binary that use them.
pub fn disrupting() -> RwLockWriteGuard<'static, ()> {
    NODES_IN_USE.write().unwrap_or_else(PoisonError::into_inner)
}

/// Held by a test that uses private nodes as they are: the tests that disrupt them wait.
pub fn undisturbed() -> RwLockReadGuard<'static, ()> {
    NODES_IN_USE.read().unwrap_or_else(PoisonError::into_inner)
}
