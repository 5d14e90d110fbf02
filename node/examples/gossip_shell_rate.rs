//! How many UDP packets a second the gossip shell's loop (`serf::Pool`) handles when its
//! pool knows `--members N` nodes (1,000 by default).
//!
//!   cargo run --release -p tribune --example gossip_shell_rate -- [--members N] [--packets P]
//!
//! One pool runs on loopback. A push-pull request over its TCP port hands it N alive members
//! (each with a Consul-like set of tags); then pings addressed to the pool are sent in
//! batches smaller than the loop's queue, each batch once the previous one was handled (the
//! pool's `packets_in` counter tells), so no packet is lost to a full socket buffer. The
//! figure is every packet the loop took in, acks sent back included, per second of wall
//! clock. Prints `members=N packets=P seconds=S packets_per_s=R`.

use std::io::Read;
use std::io::Write;
use std::net::SocketAddr;
use std::net::TcpStream;
use std::net::UdpSocket;
use std::time::Duration;
use std::time::Instant;

use tribune_core::gossip;
use tribune_core::gossip::codec::Ping;
use tribune_core::gossip::codec::PushPull;
use tribune_core::gossip::codec::PushPullMember;
use tribune_core::gossip::Identity;
use tribune_core::gossip::MemberState;
use tribune_core::gossip::Message;
use tribune_node::serf::Pool;

/// Pings in flight at once: few enough for the pool's UDP socket buffer (a default
/// `rmem` holds a few hundred small datagrams) and its queue of woken inputs (1,024).
const BATCH: u64 = 64;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

/// A port free on loopback for both UDP and TCP, as the pool binds both.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("local addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn tags(i: u64) -> gossip::Tags {
    [
        ("role", "node".to_string()),
        ("dc", "dc1".to_string()),
        ("segment", String::new()),
        ("id", format!("00000000-0000-0000-0000-{i:012}")),
        ("vsn", "2".to_string()),
        ("vsn_min", "2".to_string()),
        ("vsn_max", "3".to_string()),
        ("build", "0.1.0:unknown".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Hand the pool at `addr` `n` alive members with one push-pull request.
fn populate(addr: SocketAddr, n: u64) {
    let members = (0..n)
        .map(|i| PushPullMember {
            name: format!("member-{i:05}"),
            addr: SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], 1)),
            tags: tags(i),
            incarnation: 1,
            state: MemberState::Alive,
        })
        .collect();
    let pp = PushPull {
        from: "member-00000".into(),
        reply: false,
        join: true,
        event_ltime: 0,
        members,
    };
    let body = Message::PushPull(pp).encode();
    let mut s = TcpStream::connect(addr).expect("connect to the pool");
    s.write_all(&(body.len() as u32).to_be_bytes())
        .and_then(|_| s.write_all(&body))
        .expect("push-pull request");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("push-pull reply");
}

fn main() {
    let members = arg("--members", 1000);
    let packets = arg("--packets", 200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let identity = Identity {
        name: "bench".into(),
        addr,
        tags: tags(u64::MAX >> 16),
    };
    let pool = rt
        .block_on(Pool::start(addr, gossip::Config::lan(), identity, "lan"))
        .expect("start the pool");
    populate(addr, members);
    while (pool.members().len() as u64) < members + 1 {
        std::thread::sleep(Duration::from_millis(10));
    }

    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind the sender");
    let ping = |seq: u64| {
        Message::Ping(Ping {
            seq: seq as u32,
            target: "bench".into(),
            incarnation: 1,
        })
        .encode()
    };
    let base = pool.counters().packets_in;
    let started = Instant::now();
    let mut sent = 0;
    while sent < packets {
        let batch = BATCH.min(packets - sent);
        for _ in 0..batch {
            udp.send_to(&ping(sent), addr).expect("send a ping");
            sent += 1;
        }
        while pool.counters().packets_in - base < sent {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "members={members} packets={packets} seconds={secs:.3} packets_per_s={:.0}",
        packets as f64 / secs
    );
}
