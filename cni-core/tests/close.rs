#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The last close of an nf_tables socket after a deletion is a helper's, made once the
//! namespace's nf_tables have been quiet (see `firewall::nfnetlink`): while batches keep coming
//! the helper holds the socket, and once they stop it closes it, exits and leaves no zombie.

use std::time::{Duration, Instant};

use cni_core::firewall::build;
use cni_core::firewall::schema::{SetType, SetTypeValue};
use cni_core::firewall::types::NfFamily;
use cni_core::firewall::Batch;
use cni_core::netns::NetNs;
use test_support::{helpers, require_root, Netns};

/// Live (not zombie) children of this process.
fn live_children() -> usize {
    helpers::children()
        .iter()
        .filter(|(_, state)| *state != 'Z')
        .count()
}

fn table_with_set(name: &str) -> Batch {
    let mut batch = Batch::new();
    batch
        .add(build::table(NfFamily::INet, name))
        .add(build::set(
            NfFamily::INet,
            name,
            "s",
            SetTypeValue::Single(SetType::Ipv4Addr),
            &[],
        ));
    batch
}

fn deletion_of(name: &str) -> Batch {
    let mut batch = Batch::new();
    batch.delete(build::table(NfFamily::INet, name));
    batch
}

#[test]
fn the_helper_closes_once_batches_stop_and_exits() {
    require_root();
    helpers::adopt_orphans();
    let node = Netns::new("fwclose");
    let ns = NetNs::open(&node.path()).unwrap();
    ns.run(|| table_with_set("tether-close").apply().unwrap())
        .unwrap();
    // A thread deletes, then its socket goes: the helper takes the last close.
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.run(|| {
                deletion_of("tether-close").apply().unwrap();
                cni_core::firewall::release();
            })
            .unwrap();
        });
    });
    let helper_made = Instant::now();
    assert_eq!(live_children(), 1, "one helper holds the socket");
    // Batches every few milliseconds for well past the old fixed pause (200 ms): the helper
    // stays. (A pause of this test longer than the helper's quiet time would let it go, so that
    // check is made only when the batches really came without one.)
    let mut widest_gap = Duration::ZERO;
    let mut last = Instant::now();
    ns.run(|| {
        for round in 0..80 {
            let batch = if round % 2 == 0 {
                table_with_set("tether-busy")
            } else {
                deletion_of("tether-busy")
            };
            batch.apply().unwrap();
            widest_gap = widest_gap.max(last.elapsed());
            last = Instant::now();
            std::thread::sleep(Duration::from_millis(4));
        }
    })
    .unwrap();
    if widest_gap < Duration::from_millis(40) && helper_made.elapsed() > Duration::from_millis(250)
    {
        assert_eq!(
            live_children(),
            1,
            "the helper closed while batches kept coming"
        );
    } else {
        eprintln!("batches paused for {widest_gap:?}: not checking that the helper waited");
    }
    // Quiet now: the helper closes, exits and is reaped.
    let reaped = helpers::reap_all(Duration::from_secs(15));
    assert_eq!(reaped, 1, "exactly one helper process");
}
