//! Floods, over real mTLS on loopback: silent TCP connections, connections over a
//! participant's cap or the total cap, HTTP/2 streams whose answers are never read, slowloris on
//! the operational listener. None delays a participant (DESIGN.md: "No unauthenticated client
//! can delay an authenticated one"), what each makes the broker hold is bounded, and the
//! broker keeps serving the others.
//!
//! The attackers bind 127.0.0.x addresses (Linux routes all of 127/8 to lo) so that the
//! per-source bounds can be seen. The tests run one at a time, with no other test in the process
//! (`crate::alone`): they share the machine's cores, the process's descriptors and (for the
//! broker hosted here) its resident memory.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use broker::AcceptLimits;
use broker::client::reason_of;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic::Code;
use tonic::transport::Channel;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_proto::v1::registry_client::RegistryClient;
use unefois_tests::{BrokerOptions, TestBroker, TestPki, http_get, install_crypto};

/// What the issue allows a participant's fetch to take during a flood.
const BUDGET: Duration = Duration::from_secs(2);

/// Connections opened at once by an attacker (more at once make the kernel drop SYNs).
const BATCH: usize = 50;

/// A fetch under a law habilitation (no consent needed).
fn cantine() -> pb::FetchRequest {
    pb::FetchRequest {
        subject: "test:alice".into(),
        attestation_type: "dgfip.revenu_fiscal_reference".into(),
        purpose: "tarification_cantine".into(),
        ..Default::default()
    }
}

async fn fetch(channel: Channel) -> anyhow::Result<()> {
    let answer = ExchangeClient::new(channel)
        .fetch(cantine())
        .await?
        .into_inner();
    ensure!(answer.envelope.is_some(), "a fetch without its attestation");
    Ok(())
}

/// A new connection as `mairie-lyon` and a fetch on it: how long both took.
async fn timed_fetch_on_a_new_connection(broker: &TestBroker) -> anyhow::Result<Duration> {
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), async {
        fetch(broker.channel("mairie-lyon").await?).await
    })
    .await
    .context("no answer within 15 s")??;
    Ok(started.elapsed())
}

async fn who_am_i(channel: Channel) -> Result<String, tonic::Status> {
    RegistryClient::new(channel)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map(|r| r.into_inner().participant)
}

/// The sum of a counter's samples that carry every one of `labels`, from `/metrics`.
async fn counter(broker: &TestBroker, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
    let (status, text) = http_get(broker.ops_addr, "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn refused(broker: &TestBroker, reason: &str) -> anyhow::Result<f64> {
    counter(
        broker,
        "unefois_connections_refused_total",
        &["listener=\"mtls\"", &format!("reason=\"{reason}\"")],
    )
    .await
}

/// `count` TCP connections to `target` that never start TLS, spread over `sources` in turn;
/// those the kernel did not complete within 0.5 s are left out, and the flood stops when none
/// of a batch could be made (the listener's backlog is full: the broker stopped accepting).
async fn silent_connections(
    target: SocketAddr,
    sources: &[Ipv4Addr],
    count: usize,
) -> Vec<TcpStream> {
    let mut open = Vec::with_capacity(count);
    let mut n = 0;
    while n < count {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..BATCH.min(count - n) {
            let source = sources[n % sources.len()];
            n += 1;
            batch.spawn(async move {
                let socket = TcpSocket::new_v4().ok()?;
                socket.bind(SocketAddr::new(source.into(), 0)).ok()?;
                tokio::time::timeout(Duration::from_millis(500), socket.connect(target))
                    .await
                    .ok()?
                    .ok()
            });
        }
        let before = open.len();
        while let Some(done) = batch.join_next().await {
            if let Ok(Some(stream)) = done {
                open.push(stream);
            }
        }
        if open.len() == before {
            // The listener's backlog is full: the broker no longer accepts.
            break;
        }
    }
    open
}

/// ~2,000 silent connections from `sources`, then a participant connects and fetches within the
/// budget, and a connection opened before keeps working. Returns the silent connections made.
async fn a_fetch_gets_through_silent_connections_from(
    broker: &TestBroker,
    sources: &[Ipv4Addr],
) -> anyhow::Result<usize> {
    let before = broker.channel("mairie-lyon").await?;
    fetch(before.clone()).await?;
    let silent = silent_connections(broker.addr, sources, 2000).await;
    ensure!(
        silent.len() >= 1000,
        "only {} silent connections could be made",
        silent.len()
    );
    let took = timed_fetch_on_a_new_connection(broker).await?;
    assert!(
        took < BUDGET,
        "a participant's connection and fetch took {took:?} behind {} silent connections",
        silent.len()
    );
    fetch(before).await.context("a connection opened before")?;
    Ok(silent.len())
}

#[tokio::test]
async fn silent_connections_from_one_address_do_not_delay_a_participant() -> anyhow::Result<()> {
    let _alone = crate::alone().await;
    broker::raise_nofile_limit();
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let shed_before = refused(&broker, "handshakes_per_source").await?;
    let silent =
        a_fetch_gets_through_silent_connections_from(&broker, &[Ipv4Addr::new(127, 0, 0, 2)])
            .await?;
    // The attacker's address keeps at most its cap of pending handshakes: the rest were shed
    // at once, not left to time out.
    let per_source = AcceptLimits::default().max_pending_handshakes_per_source;
    let shed = refused(&broker, "handshakes_per_source").await? - shed_before;
    assert!(
        shed >= (silent - per_source) as f64,
        "{shed} shed of {silent} silent connections"
    );
    broker.stop().await
}

#[tokio::test]
async fn silent_connections_from_the_clients_own_address_do_not_delay_it() -> anyhow::Result<()> {
    let _alone = crate::alone().await;
    broker::raise_nofile_limit();
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    // The participant connects from 127.0.0.1 too: the attacker's oldest handshakes make room.
    a_fetch_gets_through_silent_connections_from(&broker, &[Ipv4Addr::LOCALHOST]).await?;
    broker.stop().await
}

#[tokio::test]
async fn silent_connections_from_many_addresses_do_not_delay_a_participant() -> anyhow::Result<()> {
    let _alone = crate::alone().await;
    broker::raise_nofile_limit();
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let shed_before = refused(&broker, "handshakes_total").await?;
    // 40 addresses, 50 each: under the per-source cap, over the total of pending handshakes.
    let sources: Vec<Ipv4Addr> = (10..50).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    let silent = a_fetch_gets_through_silent_connections_from(&broker, &sources).await?;
    let total = AcceptLimits::default().max_pending_handshakes;
    let shed = refused(&broker, "handshakes_total").await? - shed_before;
    assert!(
        shed >= (silent - total) as f64,
        "{shed} shed of {silent} silent connections"
    );
    broker.stop().await
}

/// A raw TLS connection as `name`, ALPN h2, with nothing sent on it yet.
async fn tls_as(
    broker: &TestBroker,
    name: &str,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for ca in unefois_certs::load_certificates(&broker.pki_dir.join("ca.crt"))? {
        roots.add(ca)?;
    }
    let (cert, key) = broker::client::credential_paths(&broker.pki_dir, name);
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            unefois_certs::load_certificates(&cert)?,
            unefois_certs::load_private_key(&key)?,
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(broker.addr).await?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
        .await?)
}

/// Whether the peer closes `stream` within `wait` (what it sends meanwhile is read and dropped).
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), wait: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_participant_over_its_connection_cap_is_refused_and_others_are_not() -> anyhow::Result<()>
{
    let _alone = crate::alone().await;
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            accept: AcceptLimits {
                max_connections_per_participant: 3,
                ..AcceptLimits::default()
            },
            ..BrokerOptions::default()
        },
    )
    .await?;
    let mut lyon = Vec::new();
    for _ in 0..3 {
        let channel = broker.channel("mairie-lyon").await?;
        // Answered: the broker counts this connection before the next one opens.
        who_am_i(channel.clone()).await?;
        lyon.push(channel);
    }
    let refused = who_am_i(broker.channel("mairie-lyon").await?)
        .await
        .expect_err("a fourth connection of mairie-lyon was served");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason_of(&refused), Some(ErrorReason::TooManyConnections));
    let message = refused.message();
    assert!(
        message.contains("mairie-lyon") && message.contains(" 3 connections"),
        "{message}"
    );
    // Another participant is unaffected, and so are the connections within the cap.
    assert_eq!(who_am_i(broker.channel("caf").await?).await?, "caf");
    for channel in &lyon {
        fetch(channel.clone()).await?;
    }
    // The connection over the cap is closed shortly after its handshake; those within stay.
    let mut over = tls_as(&broker, "mairie-lyon").await?;
    assert!(
        closed_within(&mut over, Duration::from_secs(10)).await,
        "a connection over the cap was kept open"
    );
    // A connection that closes gives its place back.
    drop(lyon.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match who_am_i(broker.channel("mairie-lyon").await?).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(
                    reason_of(&e),
                    Some(ErrorReason::TooManyConnections),
                    "{e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("a closed connection's place was not given back: {e:?}"),
        }
    }
    broker.stop().await
}

#[tokio::test]
async fn over_the_total_connection_cap_a_new_connection_is_closed_before_tls() -> anyhow::Result<()>
{
    let _alone = crate::alone().await;
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            accept: AcceptLimits {
                max_connections: 3,
                // A connection closed now was refused, not timed out.
                handshake_timeout: Duration::from_secs(60),
                ..AcceptLimits::default()
            },
            ..BrokerOptions::default()
        },
    )
    .await?;
    let mut open = Vec::new();
    for name in ["mairie-lyon", "caf", "dgfip"] {
        let channel = broker.channel(name).await?;
        assert_eq!(who_am_i(channel.clone()).await?, name);
        open.push(channel);
    }
    let mut tcp = TcpStream::connect(broker.addr).await?;
    assert!(
        closed_within(&mut tcp, Duration::from_secs(10)).await,
        "a connection over the total cap was kept open"
    );
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        who_am_i(broker.channel("dinum").await?)
            .await
            .map_err(anyhow::Error::from)
    })
    .await
    .context("a connection over the total cap was left waiting")?;
    assert!(
        refused.is_err(),
        "a connection over the total cap was served"
    );
    for channel in &open {
        who_am_i(channel.clone()).await?;
    }
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = async {
            who_am_i(broker.channel("dinum").await?)
                .await
                .map_err(anyhow::Error::from)
        };
        match served.await {
            Ok(who) => {
                assert_eq!(who, "dinum");
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("a closed connection's place was not given back: {e:#}"),
        }
    }
    broker.stop().await
}

/// An HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HPACK string: short, no Huffman.
fn hpack_string(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 127);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// A client preface, then `streams` unary calls of `path` with an empty request message, as
/// raw bytes: what a client that never reads its answers writes.
fn calls_never_read(streams: u32, path: &str) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    let mut block = vec![0x83, 0x87]; // :method POST, :scheme https
    block.push(0x04); // :path, literal without indexing
    hpack_string(&mut block, path);
    block.push(0x01); // :authority
    hpack_string(&mut block, "localhost");
    block.extend([0x0f, 0x10]); // content-type (static index 31)
    hpack_string(&mut block, "application/grpc");
    block.push(0x00); // a new name
    hpack_string(&mut block, "te");
    hpack_string(&mut block, "trailers");
    for i in 0..streams {
        let id = 2 * i + 1;
        out.extend(h2_frame(0x1, 0x4, id, &block)); // HEADERS, END_HEADERS
        out.extend(h2_frame(0x0, 0x1, id, &[0, 0, 0, 0, 0])); // DATA, END_STREAM
    }
    out
}

/// The resident memory of this process (which hosts the broker), in KiB.
fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/self/status")
}

#[tokio::test]
async fn streams_whose_answers_are_never_read_hold_bounded_memory() -> anyhow::Result<()> {
    let _alone = crate::alone().await;
    broker::raise_nofile_limit();
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    // Warm: the first calls allocate what every later one reuses.
    fetch(broker.channel("mairie-lyon").await?).await?;
    RegistryClient::new(broker.channel("caf").await?)
        .list_attestation_types(pb::ListAttestationTypesRequest {})
        .await?;
    let before = rss_kib()?;

    // The finding: 20 connections x 1,000 streams, answers never read.
    let calls = Arc::new(calls_never_read(
        1000,
        "/unefois.v1.Registry/ListAttestationTypes",
    ));
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut stream = tls_as(&broker, "caf").await?;
        let calls = calls.clone();
        attackers.spawn(async move {
            let _ = stream.write_all(&calls).await;
            let _ = stream.flush().await;
            // Never read; hold the connection open.
            std::future::pending::<()>().await;
            drop(stream);
        });
    }
    // Until the broker has taken in what it will.
    let mut grown = rss_kib()?;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib()?;
        if now <= grown + 256 {
            break;
        }
        grown = now;
    }
    let growth_mib = grown.saturating_sub(before) / 1024;
    eprintln!("resident memory grew by {growth_mib} MiB");
    assert!(
        growth_mib < 48,
        "20 connections x 1,000 unread streams grew the broker by {growth_mib} MiB"
    );
    // Meanwhile the others are served.
    timed_fetch_on_a_new_connection(&broker).await?;
    attackers.shutdown().await;
    broker.stop().await
}

/// `unefois serve --dev` on ephemeral ports, run under a shell that first sets its
/// file-descriptor limits (soft and hard) to `nofile`; killed when dropped.
struct LimitedBinary {
    child: std::process::Child,
    addr: SocketAddr,
    ops_addr: SocketAddr,
    pki_dir: std::path::PathBuf,
    _home: tempfile::TempDir,
}

impl Drop for LimitedBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LimitedBinary {
    async fn start(nofile: u32) -> anyhow::Result<LimitedBinary> {
        let binary = unefois_tests::unefois_binary()?;
        let home = tempfile::tempdir()?;
        let mut child = std::process::Command::new("sh")
            .current_dir(unefois_tests::repo_root())
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(&binary)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
                "--dev",
                "--registry",
                "examples/registry.toml",
            ])
            .arg("--home")
            .arg(home.path())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("cannot start unefois serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let printed = tokio::task::spawn_blocking(move || unefois_tests::served_addresses(stdout));
        let mut served = LimitedBinary {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ops_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pki_dir: home.path().join("pki"),
            _home: home,
        };
        (served.addr, served.ops_addr) = printed.await??;
        unefois_tests::wait_until_ready(&mut served.child, served.ops_addr).await?;
        Ok(served)
    }

    async fn channel(&self, name: &str) -> anyhow::Result<Channel> {
        Ok(broker::client::connect(&self.pki_dir, name, &self.addr.to_string()).await?)
    }
}

/// A slowloris client: request headers that never end, one byte every 250 ms, until the server
/// closes the connection. Returns how long the connection stayed open, or `None` if it was
/// still open after `give_up`.
async fn slowloris(mut tcp: TcpStream, give_up: Duration) -> Option<Duration> {
    let opened = Instant::now();
    let header = b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Slow: ";
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    while opened.elapsed() < give_up {
        let byte = header.get(sent).copied().unwrap_or(b'a');
        if tcp.write_all(&[byte]).await.is_err() {
            return Some(opened.elapsed());
        }
        sent += 1;
        // Read (an answer, a 408 say, then the close) for a while before the next byte.
        let read = tokio::time::timeout(Duration::from_millis(250), tcp.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            return Some(opened.elapsed());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_ops_listener_starves_neither_listener() -> anyhow::Result<()> {
    let _alone = crate::alone().await;
    broker::raise_nofile_limit();
    // A common default limit: 1,650 connections would take every descriptor the broker has.
    let broker = LimitedBinary::start(1024).await?;
    let before = broker.channel("mairie-lyon").await?;
    fetch(before.clone()).await?;

    let mut slow = tokio::task::JoinSet::new();
    let mut made = 0;
    while made < 1650 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..BATCH {
            let ops = broker.ops_addr;
            batch.spawn(async move {
                tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(ops))
                    .await
                    .ok()?
                    .ok()
            });
            made += 1;
        }
        while let Some(done) = batch.join_next().await {
            if let Ok(Some(tcp)) = done {
                slow.spawn(slowloris(tcp, Duration::from_secs(25)));
            }
        }
    }
    // Past the descriptor limit: the broker may not have accepted them all.
    ensure!(slow.len() >= 1000, "only {} slow connections", slow.len());
    let attackers = slow.len();

    // A probe still gets its answer at once.
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(10),
        http_get(broker.ops_addr, "/healthz"),
    )
    .await
    .context("/healthz did not answer within 10 s")??;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(
        started.elapsed() < BUDGET,
        "/healthz took {:?}",
        started.elapsed()
    );
    // The mTLS listener still has descriptors: a new participant connection is served.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), async {
        fetch(broker.channel("mairie-lyon").await?).await
    })
    .await
    .context("no fetch within 15 s")??;
    assert!(
        started.elapsed() < BUDGET,
        "a fetch took {:?}",
        started.elapsed()
    );
    fetch(before).await.context("a connection opened before")?;

    // Every slow connection is closed: shed for a newer one, or at the header timeout.
    let timeout = AcceptLimits::default().ops_header_timeout;
    let mut open_too_long = 0;
    while let Some(done) = slow.join_next().await {
        match done? {
            Some(open) if open <= timeout + Duration::from_secs(3) => {}
            _ => open_too_long += 1,
        }
    }
    assert_eq!(
        open_too_long, 0,
        "of {attackers} slowloris connections, {open_too_long} stayed open past the header timeout"
    );
    Ok(())
}
