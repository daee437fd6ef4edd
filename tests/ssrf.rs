//! The SSRF suite: on the default address policy, every spelling of a private, loopback or
//! otherwise non-public destination gets a 4xx from the proxy, and a loopback canary sees
//! no connection at all.

use std::sync::Arc;

use mailveil::{Fetcher, StaticResolver};

use crate::util::canary::{Canary, Response};
use crate::util::proxy::{fetch_config, get, loopback_proxy, Proxy};
use crate::util::upstream::{Route, Upstream};

/// A canary on `bind` that answers nothing useful: any connection at all is the failure.
fn start_canary(bind: &str) -> Canary {
    Canary::start(bind, |_| Response::not_found()).expect("bind canary")
}

fn cases(p: u16, p6: u16) -> Vec<String> {
    [
        "http://127.0.0.1:{P}/x.png",
        "http://127.1:{P}/x.png",
        "http://2130706433:{P}/x.png",
        "http://0x7f000001:{P}/x.png",
        "http://017700000001:{P}/x.png",
        "http://0177.0.0.1:{P}/x.png",
        "http://0x7f.0.0.1:{P}/x.png",
        "http://[::1]:{P6}/x.png",
        "http://[::ffff:127.0.0.1]:{P}/x.png",
        "http://[::ffff:7f00:1]:{P}/x.png",
        "http://[0:0:0:0:0:ffff:127.0.0.1]:{P}/x.png",
        "http://[::127.0.0.1]:{P}/x.png",
        "http://[64:ff9b::7f00:1]:{P}/x.png",
        "http://[2002:7f00:1::]:{P}/x.png",
        "http://0.0.0.0:{P}/x.png",
        "http://0:{P}/x.png",
        "http://localhost:{P}/x.png",
        "http://LOCALHOST.:{P}/x.png",
        "http://metadata.localhost:{P}/x.png",
        "https://localhost:{P}/x.png",
        "http://10.0.0.1/x.png",
        "http://172.16.0.1/x.png",
        "http://192.168.1.1/x.png",
        "http://100.64.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://224.0.0.1/x.png",
        "http://255.255.255.255/x.png",
        "http://198.18.0.1/x.png",
        "http://192.0.2.1/x.png",
        "http://203.0.113.7/x.png",
        "http://[fc00::1]/x.png",
        "http://[fe80::1]/x.png",
        "http://[fec0::1]/x.png",
        "http://[ff02::1]/x.png",
        "http://[2001:db8::1]/x.png",
        "http://user:pass@example.com/x.png",
        "http://example.com@127.0.0.1:{P}/x.png",
        "http://127.0.0.1:{P}@example.com/x.png",
        "ftp://127.0.0.1:{P}/x.png",
        "file:///etc/passwd",
        "gopher://127.0.0.1:{P}/_x",
    ]
    .iter()
    .map(|c| {
        c.replace("{P6}", &p6.to_string())
            .replace("{P}", &p.to_string())
    })
    .collect()
}

async fn assert_refused(proxy: &Proxy, target: &str) {
    let got = get(&proxy.url(&proxy.path_for(target))).await;
    assert!(
        (400..500).contains(&got.status),
        "{target}: expected a 4xx, got {}",
        got.status
    );
}

#[tokio::test]
async fn every_spelling_of_a_private_destination_is_refused() {
    let canary = start_canary("127.0.0.1:0");
    let canary6 = start_canary("[::1]:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(dir.path(), fetch_config(&[])).await;
    let cases = cases(canary.addr.port(), canary6.addr.port());
    assert!(cases.len() >= 30);
    for target in &cases {
        assert_refused(&proxy, target).await;
    }
    assert_eq!(
        canary.finish(),
        Vec::<String>::new(),
        "the IPv4 canary was contacted"
    );
    assert_eq!(
        canary6.finish(),
        Vec::<String>::new(),
        "the IPv6 canary was contacted"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn names_resolving_to_private_addresses_are_refused() {
    let canary = start_canary("127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let resolver = StaticResolver::new([
        (
            "loopback.test".to_owned(),
            vec!["127.0.0.1".parse().expect("ip")],
        ),
        (
            "mixed.test".to_owned(),
            vec![
                "192.0.2.10".parse().expect("ip"),
                "127.0.0.1".parse().expect("ip"),
            ],
        ),
        (
            "metadata.test".to_owned(),
            vec!["169.254.169.254".parse().expect("ip")],
        ),
    ]);
    let fetcher = Fetcher::with_resolver(fetch_config(&[]), Arc::new(resolver));
    let proxy = Proxy::start_with_fetcher(dir.path(), fetcher).await;
    let p = canary.addr.port();
    for host in ["loopback.test", "mixed.test", "metadata.test"] {
        assert_refused(&proxy, &format!("http://{host}:{p}/x.png")).await;
    }
    assert_eq!(canary.finish(), Vec::<String>::new());
    proxy.stop().await;
}

#[tokio::test]
async fn a_redirect_to_a_private_address_is_refused() {
    // The upstream's exact address is allowed (as a public sender would be); the canary,
    // elsewhere on loopback, is not.
    let canary = start_canary("127.0.0.2:0");
    let canary6 = start_canary("[::1]:0");
    let up = Upstream::start("127.0.0.1:0").await;
    up.route(
        "/to-canary",
        Route::Redirect(format!("http://{}/x.png", canary.addr)),
    );
    up.route(
        "/to-canary6",
        Route::Redirect(format!("http://{}/x.png", canary6.addr)),
    );
    up.route(
        "/to-mapped",
        Route::Redirect(format!(
            "http://[::ffff:127.0.0.2]:{}/x.png",
            canary.addr.port()
        )),
    );
    up.route(
        "/to-metadata",
        Route::Redirect("http://169.254.169.254/latest/".into()),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = loopback_proxy(dir.path()).await;
    for path in ["/to-canary", "/to-canary6", "/to-mapped", "/to-metadata"] {
        assert_refused(&proxy, &up.url(path)).await;
    }
    assert_eq!(
        [canary.finish(), canary6.finish()].concat(),
        Vec::<String>::new()
    );
    proxy.stop().await;
}
