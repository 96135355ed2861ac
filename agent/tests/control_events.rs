//! The durable event outbox and its delivery to a (test) control plane over
//! mutual TLS, with the daemon as a real process: outages, restarts, bounds.
//! Events are appended with the library's `Outbox::push` from this process,
//! exactly as a CLI one-shot appends them concurrently with the daemon.

mod support;

use cloudnx_agent::outbox::{Event, Outbox, Severity};
use serde_json::{json, Value};
use support::control_plane::{metric, wait_for, ControlPlane, Daemon, Mode};
use support::tls::Pki;
use support::{free_port, Scratch};

fn push(outbox: &Outbox, kind: &str, sev: Severity, n: u64) -> Event {
    let e = Event::new("test-host", kind, sev, json!({"n": n}));
    outbox.push(&e).unwrap();
    e
}

/// The first occurrence of each id, in arrival order.
fn first_occurrences(events: &[Value]) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    events
        .iter()
        .filter(|e| seen.insert(e["id"].as_str().unwrap().to_owned()))
        .cloned()
        .collect()
}

struct Setup {
    s: Scratch,
    cp: ControlPlane,
    config: std::path::PathBuf,
    port: u16,
    outbox: Outbox,
}

/// A scratch host whose agent reports to a test control plane (not yet up).
fn setup(extra: &str) -> Setup {
    let s = Scratch::new();
    let pki = Pki::new(&s.path("tls"), "test-host");
    let cp = ControlPlane::new(&pki, "test-host", free_port());
    let port = free_port();
    let config = s.config(&pki.config_section(port, Some(&cp.url()), extra));
    std::fs::create_dir_all(s.path("state")).unwrap();
    let outbox = Outbox::new(&s.path("state"));
    Setup {
        s,
        cp,
        config,
        port,
        outbox,
    }
}

#[test]
fn events_arrive_in_order_without_loss_after_an_outage_and_an_agent_crash() {
    let Setup {
        s,
        cp,
        config,
        port,
        outbox,
    } = setup("heartbeat_seconds = 1\nretry_max_seconds = 2\n");

    // The control plane is down from the start.
    let mut d = Daemon::start(&config, port);
    for n in 0..4 {
        push(
            &outbox,
            "job.finished",
            if n == 2 {
                Severity::Page
            } else {
                Severity::Info
            },
            n,
        );
    }
    wait_for(
        20,
        "two heartbeats queued while the control plane is down",
        || {
            (outbox
                .pending()
                .unwrap()
                .iter()
                .filter(|e| e.kind == "heartbeat")
                .count()
                >= 2)
                .then_some(())
        },
    );
    wait_for(10, "the outbox gauge to count the backlog", || {
        (metric(&s, "cloudnx_report_outbox_events")? >= 6.0).then_some(())
    });
    assert!(
        d.logs().contains("event delivery failed, will retry"),
        "{}",
        d.logs()
    );

    // The agent crashes; a one-shot appends while no daemon runs.
    d.kill();
    for n in 4..7 {
        push(&outbox, "luks.drift", Severity::Warning, n);
    }
    let mut d = Daemon::start(&config, port);
    // The control plane comes back but fails for a while.
    cp.set_mode(Mode::Fail(503));
    cp.up();
    wait_for(20, "a delivery attempt refused with 503", || {
        cp.batches().iter().any(|b| b.status == 503).then_some(())
    });
    cp.set_mode(Mode::Fail(500));
    wait_for(20, "a delivery attempt refused with 500", || {
        cp.batches().iter().any(|b| b.status == 500).then_some(())
    });
    // Everything appended so far, in file order, exactly as appended.
    let appended: Vec<Value> = outbox
        .pending()
        .unwrap()
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert!(appended.len() >= 9, "{appended:#?}");
    cp.set_mode(Mode::Accept);
    wait_for(30, "every appended event delivered", || {
        let got = cp.accepted_events();
        appended.iter().all(|e| got.contains(e)).then_some(())
    });
    // Delivered events leave the outbox (only newer heartbeats may remain).
    wait_for(10, "the outbox to drop delivered events", || {
        let ids: Vec<String> = outbox
            .pending()
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        appended
            .iter()
            .all(|e| !ids.contains(&e["id"].as_str().unwrap().to_owned()))
            .then_some(())
    });
    d.stop();

    let got = first_occurrences(&cp.accepted_events());
    let order: Vec<&Value> = got.iter().filter(|e| appended.contains(e)).collect();
    assert_eq!(order.len(), appended.len());
    for (a, b) in order.iter().zip(&appended) {
        assert_eq!(*a, b, "events arrived out of order");
    }
    assert!(cp.violations().is_empty(), "{:?}", cp.violations());
    let page = appended.iter().find(|e| e["severity"] == "page").unwrap();
    assert_eq!(page["type"], "job.finished");
}

#[test]
fn a_full_outbox_drops_the_oldest_heartbeats_then_info_but_never_a_page() {
    let Setup {
        s,
        cp,
        config,
        port,
        outbox,
    } = setup("heartbeat_seconds = 3600\nretry_max_seconds = 1\noutbox_max_events = 10\n");
    let mut pages = vec![];
    for n in 0..12 {
        push(&outbox, "heartbeat", Severity::Info, n);
        if n % 3 == 0 {
            push(&outbox, "job.finished", Severity::Info, n);
        }
    }
    for n in 0..11 {
        pages.push(push(&outbox, "job.finished", Severity::Page, 100 + n));
    }
    let mut d = Daemon::start(&config, port);
    // Over the bound (10) with 11 pages: every heartbeat and info goes, every page stays.
    wait_for(10, "the daemon to enforce the outbox bound", || {
        (outbox.pending().unwrap() == pages).then_some(())
    });
    wait_for(10, "the outbox gauge", || {
        (metric(&s, "cloudnx_report_outbox_events")? == 11.0).then_some(())
    });
    assert!(d.logs().contains("dropped the oldest"), "{}", d.logs());
    cp.up();
    wait_for(20, "the pages delivered", || {
        let got: Vec<Value> = first_occurrences(&cp.accepted_events());
        (got.len() == 11).then_some(got)
    })
    .iter()
    .zip(&pages)
    .for_each(|(g, p)| assert_eq!(*g, serde_json::to_value(p).unwrap()));
    wait_for(10, "the outbox emptied", || {
        (outbox.pending().unwrap().is_empty()).then_some(())
    });
    wait_for(10, "the gauge at zero", || {
        (metric(&s, "cloudnx_report_outbox_events")? == 0.0).then_some(())
    });
    d.stop();
    assert!(cp.violations().is_empty(), "{:?}", cp.violations());
}

#[test]
fn events_are_never_sent_to_a_control_plane_outside_the_ca() {
    let s = Scratch::new();
    let pki = Pki::new(&s.path("tls"), "test-host");
    let impostor =
        ControlPlane::with_server_cert(&pki, &pki.foreign_server, "test-host", free_port());
    impostor.up();
    let port = free_port();
    let config = s.config(&pki.config_section(
        port,
        Some(&impostor.url()),
        "heartbeat_seconds = 1\nretry_max_seconds = 1\n",
    ));
    let mut d = Daemon::start(&config, port);
    let outbox = Outbox::new(&s.path("state"));
    let page = push(&outbox, "job.finished", Severity::Page, 1);
    wait_for(20, "a refused delivery attempt logged", || {
        (d.logs().matches("event delivery failed").count() >= 2).then_some(())
    });
    assert!(impostor.batches().is_empty(), "{:?}", impostor.batches());
    assert!(
        outbox.pending().unwrap().contains(&page),
        "the event stays in the outbox"
    );
    assert!(
        d.logs().contains("invalid peer certificate: UnknownIssuer"),
        "{}",
        d.logs()
    );
    d.stop();
}
