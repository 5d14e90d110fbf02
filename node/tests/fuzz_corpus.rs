//! Every checked-in fuzz corpus (`fuzz/corpus/<target>/`) replayed through its target's
//! entry point in `tribune_node::fuzzing`, so that a seed or a crash reproducer that
//! panics fails an ordinary test run. A missing or empty corpus fails too.

use std::path::PathBuf;

use tribune_node::fuzzing;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| e.expect("a readable corpus directory").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("a readable corpus file");
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        eprintln!("{target}: {}", path.display());
        run(&bytes);
    }
}

#[test]
fn server_rpc_frame() {
    replay("server_rpc_frame", fuzzing::rpc_frame);
}

#[test]
fn dns_query() {
    replay("dns_query", fuzzing::dns_query);
}

#[test]
fn http_query() {
    replay("http_query", fuzzing::http_query);
}

#[test]
fn kv_json() {
    replay("kv_json", fuzzing::kv_json);
}

#[test]
fn config_loader() {
    replay("config_loader", fuzzing::config_loader);
}

#[test]
fn filter() {
    replay("filter", fuzzing::filter);
}

#[test]
fn http_request() {
    replay("http_request", fuzzing::http_request);
}

#[test]
fn gossip_packet() {
    replay("gossip_packet", fuzzing::gossip_packet);
}

/// The hand-made seeds are what they claim to be, so the fuzzers start past the decoders.
#[test]
fn seeds_reach_past_the_decoders() {
    let read = |target: &str, name: &str| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    for name in ["hello", "claim", "http-kv-put", "mux"] {
        let frame = read("server_rpc_frame", name);
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        let rpc: tribune_node::wire::Rpc =
            postcard::from_bytes(&frame[4..4 + len]).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name}: {rpc:?}");
    }
    for name in [
        "a-web-service",
        "ptr",
        "srv-consul-edns",
        "srv-web-tag",
        "srv-web-all-edns",
        "a-many-trimmed",
        "txt-node-meta",
        "a-addr-hex",
        "ptr-service-address",
        "aaaa-web-tag",
        "any-external-node",
    ] {
        let m = hickory_proto::op::Message::from_vec(&read("dns_query", name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.queries.len(), 1, "{name}");
    }
    for name in ["walkthrough.json", "walkthrough.hcl"] {
        let text = String::from_utf8(read("config_loader", name)).unwrap();
        let v = if name.ends_with(".hcl") {
            tribune_node::config::hcl_to_json(&text).unwrap()
        } else {
            serde_json::from_str(&text).unwrap()
        };
        let serde_json::Value::Object(flags) = v else {
            panic!("{name}: not an object")
        };
        let opts = tribune_node::config::LoadOptions {
            flags,
            ..Default::default()
        };
        let (cfg, warnings) = tribune_node::config::load(&opts).unwrap();
        // Every key is known; the walkthrough's one not yet in effect (ui) is said so.
        let no_effect: Vec<&String> = warnings
            .iter()
            .filter(|w| w.contains("has no effect yet"))
            .collect();
        assert_eq!(no_effect.len(), warnings.len(), "{name}: {warnings:?}");
        assert_eq!(warnings.len(), 1, "{name}: {warnings:?}");
        assert_eq!(cfg.datacenter, "ke-dc", "{name}");
    }
}
