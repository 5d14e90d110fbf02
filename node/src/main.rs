//! `tribune`: the agent and the CLI verbs, with Consul's names and flags.

use tribune_node::{agent, cli};

const USAGE: &str = "Usage: tribune [--version] [--help] <command> [<args>]

Available commands are:
    agent          Runs a Tribune agent
    force-leave    Forces a member of the cluster to enter the \"left\" state
    info           Provides debugging information for operators.
    join           Tell Tribune agent to join cluster
    keygen         Generates a new encryption key
    kv             Interact with the key-value store
    leave          Gracefully leaves the cluster and shuts down
    members        Lists the members of a Tribune cluster
    operator       Provides cluster-level tools (raft list-peers)
    reload         Triggers the agent to reload configuration files
    version        Prints the Tribune version
    watch          Watch for changes in Tribune";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => {
            eprintln!("{USAGE}");
            std::process::exit(1);
        }
    };
    let code = match cmd {
        "version" | "-version" | "--version" | "-v" => cli::version(rest),
        "keygen" => cli::keygen(),
        "-h" | "-help" | "--help" | "help" => {
            println!("{USAGE}");
            0
        }
        "agent" => runtime(true).block_on(agent::run(rest)),
        "kv" | "members" | "leave" | "reload" | "join" | "force-leave" | "info" | "watch"
        | "operator" => {
            let rt = runtime(false);
            rt.block_on(async {
                match cmd {
                    "kv" => cli::kv(rest).await,
                    "members" => cli::members(rest).await,
                    "leave" => cli::leave(rest).await,
                    "reload" => cli::reload(rest).await,
                    "join" => cli::join(rest).await,
                    "force-leave" => cli::force_leave(rest).await,
                    "info" => cli::info(rest).await,
                    "operator" => cli::operator(rest).await,
                    _ => cli::watch(rest).await,
                }
            })
        }
        other => {
            eprintln!("Unknown command: {other}\n\n{USAGE}");
            1
        }
    };
    std::process::exit(code);
}

fn runtime(multi: bool) -> tokio::runtime::Runtime {
    let mut b = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().expect("tokio runtime")
}
