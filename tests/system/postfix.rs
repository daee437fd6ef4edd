//! End to end with the real Postfix (Debian's package): mail submitted over SMTP passes
//! through the mailveil milter and is delivered to a Maildir; with mailveil stopped, Postfix
//! still delivers (`milter_default_action = accept`, as the README recommends).
//!
//! Postfix runs from its own config directory, queue and Maildir in a temp dir, listening
//! on a free loopback port (never 25); nothing of the machine's own Postfix set-up is read
//! or touched. Postfix's daemons drop privileges to the `postfix` user, so this test must
//! run as root (as CI does).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};

use crate::util::milter::{newsletter, Milter};
use crate::util::wait::poll;
use crate::util::{free_port, leaks, listening};

/// A private Postfix instance; stopped (and waited for) on drop.
struct Postfix {
    dir: tempfile::TempDir,
    conf: PathBuf,
    port: u16,
}

impl Postfix {
    fn start(milter: &str) -> Self {
        assert!(
            Path::new("/usr/sbin/postfix").exists(),
            "Postfix must be installed (Debian package `postfix`; .ci/run installs it)"
        );
        // Say clearly why Postfix would refuse, rather than fail later.
        let uid = Command::new("id").arg("-u").output().expect("id");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "the Postfix test needs root, as Postfix does"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // Postfix's daemons run as `postfix`, delivery as `nobody`: they must get through.
        chmod(d, 0o755);
        for sub in ["conf", "queue", "data", "mail"] {
            std::fs::create_dir(d.join(sub)).expect("mkdir");
        }
        chown(&d.join("data"), "postfix:postfix");
        chown(&d.join("mail"), "nobody:nogroup");
        let port = free_port();
        let conf = d.join("conf");
        std::fs::write(
            conf.join("main.cf"),
            format!(
                "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             maillog_file = {d}/postfix.log\n\
             maillog_file_prefixes = {d}\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = mx.test.example\n\
             mydomain = test.example\n\
             mydestination =\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_recipient_restrictions = permit_mynetworks, reject\n\
             virtual_mailbox_domains = test.example\n\
             virtual_mailbox_base = {d}/mail\n\
             virtual_mailbox_maps = static:inbox/\n\
             virtual_uid_maps = static:65534\n\
             virtual_gid_maps = static:65534\n\
             alias_maps =\n\
             alias_database =\n\
             local_recipient_maps =\n\
             biff = no\n\
             # The README's recommended milter settings.\n\
             smtpd_milters = inet:{milter}\n\
             non_smtpd_milters = inet:{milter}\n\
             milter_default_action = accept\n\
             milter_protocol = 6\n",
                d = d.display(),
            ),
        )
        .expect("main.cf");
        // No chroot (the temp dir is not set up as one); only the services this test uses.
        let services = [
            format!("127.0.0.1:{port} inet n - n - - smtpd"),
            "pickup unix n - n 60 1 pickup".into(),
            "cleanup unix n - n - 0 cleanup".into(),
            "qmgr unix n - n 300 1 qmgr".into(),
            "rewrite unix - - n - - trivial-rewrite".into(),
            "bounce unix - - n - 0 bounce".into(),
            "defer unix - - n - 0 bounce".into(),
            "trace unix - - n - 0 bounce".into(),
            "verify unix - - n - 1 verify".into(),
            "flush unix n - n 1000? 0 flush".into(),
            "proxymap unix - - n - - proxymap".into(),
            "showq unix n - n - - showq".into(),
            "error unix - - n - - error".into(),
            "retry unix - - n - - error".into(),
            "discard unix - - n - - discard".into(),
            "virtual unix - n n - - virtual".into(),
            "anvil unix - - n - 1 anvil".into(),
            "scache unix - - n - 1 scache".into(),
            "postlog unix-dgram n - n - 1 postlogd".into(),
        ];
        std::fs::write(conf.join("master.cf"), services.join("\n") + "\n").expect("master.cf");
        let postfix = Self { dir, conf, port };
        postfix.control("check");
        postfix.control("start");
        assert!(
            poll(Duration::from_secs(20), || listening(port)),
            "postfix never listened; log:\n{}",
            postfix.log()
        );
        postfix
    }

    fn control(&self, what: &str) {
        let out = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg(what)
            .output()
            .expect("run postfix");
        assert!(
            out.status.success(),
            "postfix {what} failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix.log")).unwrap_or_default()
    }

    fn submit(&self, message: &[u8]) {
        let smtp = SmtpTransport::builder_dangerous("127.0.0.1")
            .port(self.port)
            .timeout(Some(Duration::from_secs(30)))
            .build();
        let envelope = Envelope::new(
            Some("news@sender.example".parse().expect("from")),
            vec!["reader@test.example".parse().expect("to")],
        )
        .expect("envelope");
        smtp.send_raw(&envelope, message)
            .unwrap_or_else(|e| panic!("SMTP submission failed: {e}\nlog:\n{}", self.log()));
    }

    /// Waits until the Maildir holds `count` messages and returns them, oldest first.
    fn delivered(&self, count: usize) -> Vec<String> {
        let new = self.dir.path().join("mail/inbox/new");
        let files = || -> Vec<PathBuf> {
            std::fs::read_dir(&new)
                .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        assert!(
            poll(Duration::from_secs(60), || files().len() >= count),
            "only {} of {count} delivered; log:\n{}",
            files().len(),
            self.log()
        );
        let mut files = files();
        // Maildir names start with the delivery time in seconds, then a sequence.
        files.sort_by_key(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .expect("mtime")
        });
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("read delivered message"))
            .collect()
    }
}

/// Submits `message` over SMTP and waits until the Maildir holds `count` messages; both
/// block, so they run off the test's async runtime.
async fn submit_and_wait(
    postfix: &std::sync::Arc<Postfix>,
    message: Vec<u8>,
    count: usize,
) -> Vec<String> {
    let postfix = postfix.clone();
    tokio::task::spawn_blocking(move || {
        postfix.submit(&message);
        postfix.delivered(count)
    })
    .await
    .expect("deliver")
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.path().join("queue/pid/master.pid"))
            .unwrap_or_default();
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .output();
        // Wait for the master to go before the temp dir is removed under it.
        let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
        poll(Duration::from_secs(15), || {
            pid.trim().is_empty() || !proc.exists()
        });
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(path: &Path, owner: &str) {
    let ok = Command::new("chown")
        .arg(owner)
        .arg(path)
        .status()
        .expect("chown")
        .success();
    assert!(ok, "chown {owner} {}", path.display());
}

/// Postfix stores messages with LF line ends.
fn lf(text: &str) -> String {
    text.replace("\r\n", "\n")
}

#[tokio::test]
async fn postfix_delivers_through_the_milter_and_without_it() {
    let mut milter = Milter::start("").await;
    let postfix = tokio::task::spawn_blocking({
        let addr = milter.addr.clone();
        move || Postfix::start(&addr)
    })
    .await
    .expect("start postfix");
    let postfix = std::sync::Arc::new(postfix);

    // 1. Through the milter: rewritten, the rest byte-identical, header added, prefetch queued.
    let (sent, text_part, attachment) = newsletter(1_500);
    // A report forged by the sender must not survive next to ours.
    let mut message = b"X-Mailveil: proxied=999; trackers=0; removed=0\r\n".to_vec();
    message.extend_from_slice(&sent);
    let delivered = submit_and_wait(&postfix, message, 1).await;
    let got = &delivered[0];
    let (head, body) = got.split_once("\n\n").expect("header and body");
    assert_eq!(
        head.matches("\nX-Mailveil: ").count(),
        1,
        "one X-Mailveil header:\n{head}"
    );
    assert!(
        head.contains(
            "X-Mailveil: proxied=1500; trackers=1; removed=0; tracker-hosts=list-manage.com"
        ),
        "{head}"
    );
    assert!(body.contains(&lf(&text_part)), "text part byte-identical");
    assert!(body.contains(&lf(&attachment)), "attachment byte-identical");
    // Every MIME segment but the HTML one is byte-identical (LF-stored). The SMTP client
    // ends DATA with a line break of its own, which the unfiltered delivery below shows too.
    let sent_body = lf(std::str::from_utf8(&sent).expect("utf-8"))
        .split_once("\n\n")
        .expect("body")
        .1
        .to_owned()
        + "\n";
    let (sent_parts, got_parts): (Vec<&str>, Vec<&str>) = (
        sent_body.split("\n--b1").collect(),
        body.split("\n--b1").collect(),
    );
    assert_eq!(sent_parts.len(), got_parts.len());
    for (i, (s, g)) in sent_parts.iter().zip(&got_parts).enumerate() {
        if s.contains("text/html") {
            assert_ne!(s, g, "HTML part {i} rewritten");
        } else {
            assert_eq!(s, g, "part {i} byte-identical");
        }
    }
    assert_eq!(leaks(body, &["list-manage.com"]), Vec::<String>::new());
    assert!(
        body.matches(&format!("{}/i/", milter.sandbox.base()))
            .count()
            >= 1_500
    );
    assert_eq!(milter.sandbox.jobs(), 1, "prefetch queued by the milter");

    // 2. mailveil stopped: Postfix still delivers, unchanged.
    milter.daemon.terminate();
    milter.daemon.wait_exit(Duration::from_secs(20));
    let (message, _, _) = newsletter(3);
    let delivered = submit_and_wait(&postfix, message, 2).await;
    let got = &delivered[1];
    assert!(
        got.ends_with("--b1--\nepilogue\n\n"),
        "the same trailing line break without mailveil"
    );
    assert!(!got.contains("X-Mailveil"), "not filtered:\n{got}");
    assert!(
        got.contains("https://img0.remote.test/pic/0.png?u=reader"),
        "delivered as sent"
    );
    assert!(
        postfix.log().contains("Milter service"),
        "Postfix noticed the milter was gone"
    );
}
