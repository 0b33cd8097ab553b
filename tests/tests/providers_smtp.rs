//! The SMTP provider against an in-process SMTP sink: the envelope and the MIME that arrive, and
//! the class of every kind of failure, including the difference between a timeout before the
//! content was sent (`Unavailable`) and after (`Ambiguous`).

#![allow(
    clippy::panic,
    reason = "the fixture helpers are test code: a broken fixture should fail the test loudly"
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use gateway_core::config::{SmtpSettings, SmtpTls};
use gateway_core::message::{OutboundMessage, parse_message};
use gateway_core::mime::GATEWAY_ID_HEADER;
use gateway_core::providers::smtp::{SmtpLimits, SmtpProvider, SmtpTimeouts};
use gateway_core::providers::{ErrorClass, Provider};
use mail_parser::{MessageParser, MimeHeaders};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const NOW: i64 = 1_795_000_000_000;

/// What the sink answers; `None` means the normal positive reply, `Some("")` closes the
/// connection instead of answering.
#[derive(Debug, Clone, Default)]
struct Script {
    greeting_stalls: bool,
    mail: Option<&'static str>,
    rcpt: Option<&'static str>,
    data_end: Option<&'static str>,
    stall_after_content: bool,
    close_after_content: bool,
}

#[derive(Debug, Clone)]
struct Received {
    mail_from: String,
    rcpt_to: Vec<String>,
    data: Vec<u8>,
}

struct Sink {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<Mutex<usize>>,
}

impl Sink {
    async fn start(script: Script) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (r, c) = (received.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                *c.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                tokio::spawn(serve(stream, script.clone(), r.clone()));
            }
        });
        Sink {
            addr,
            received,
            connections,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn serve(stream: tokio::net::TcpStream, script: Script, received: Arc<Mutex<Vec<Received>>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    if script.greeting_stalls {
        tokio::time::sleep(Duration::from_secs(30)).await;
        return;
    }
    let _ = write.write_all(b"220 sink ESMTP\r\n").await;
    let mut current: Option<Received> = None;
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-sink\r\n250-8BITMIME\r\n250 SIZE 10000000".into()
        } else if upper.starts_with("MAIL FROM:") {
            current = Some(Received {
                mail_from: angle(&command),
                rcpt_to: Vec::new(),
                data: Vec::new(),
            });
            script.mail.unwrap_or("250 2.1.0 Ok").into()
        } else if upper.starts_with("RCPT TO:") {
            if let Some(r) = current.as_mut() {
                r.rcpt_to.push(angle(&command));
            }
            script.rcpt.unwrap_or("250 2.1.5 Ok").into()
        } else if upper == "DATA" {
            let _ = write
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await;
            let mut data = Vec::new();
            loop {
                let mut l = String::new();
                match lines.read_line(&mut l).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if l == ".\r\n" {
                    break;
                }
                let unstuffed = l.strip_prefix('.').unwrap_or(&l);
                data.extend_from_slice(unstuffed.as_bytes());
            }
            if script.close_after_content {
                return;
            }
            if script.stall_after_content {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            match script.data_end {
                Some(reply) => reply.into(),
                None => {
                    if let Some(mut r) = current.take() {
                        r.data = data;
                        received.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                    }
                    "250 2.0.0 Ok: queued as Q4711".into()
                }
            }
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else if upper == "RSET" || upper == "NOOP" {
            "250 2.0.0 Ok".into()
        } else {
            "502 5.5.2 Error: command not recognized".into()
        };
        if reply.is_empty() {
            // An empty scripted reply drops the connection instead of answering.
            return;
        }
        if write
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn angle(command: &str) -> String {
    let start = command.find('<').map_or(0, |i| i + 1);
    let end = command.rfind('>').unwrap_or(command.len());
    command[start..end].to_owned()
}

fn provider(
    addr: SocketAddr,
    tls: SmtpTls,
    exchange: Duration,
    limits: SmtpLimits,
) -> SmtpProvider {
    let settings = SmtpSettings {
        host: addr.ip().to_string(),
        port: addr.port(),
        tls,
        username: None,
        password: None,
    };
    SmtpProvider::new(
        "relay",
        &settings,
        None,
        SmtpTimeouts {
            connect: Duration::from_secs(2),
            exchange,
        },
        limits,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn plain(addr: SocketAddr) -> SmtpProvider {
    provider(
        addr,
        SmtpTls::None,
        Duration::from_secs(5),
        SmtpLimits::default(),
    )
}

/// A message whose text has a line holding a lone `.` (SMTP dot-stuffing).
fn dot_line_message() -> OutboundMessage {
    let pdf = base64::engine::general_purpose::STANDARD
        .encode(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n");
    let json = serde_json::json!({
        "id": "inv-2026-11-28-000123",
        "from": "Dr. Zoë Lovelace <ada@clinic.example>",
        "to": ["patient@example.org", {"email": "b@example.org", "name": "Börje, B."}],
        "cc": ["nurse@clinic.example"],
        "bcc": ["audit@clinic.example"],
        "reply_to": "frontdesk@clinic.example",
        "subject": "Ihr Termin am Dienstag – Bestätigung",
        "text": "Guten Tag,\nIhr Termin ist bestätigt.\n.\nEnde",
        "html": "<p>Guten Tag,</p><p>Ihr Termin ist <b>bestätigt</b>.</p>",
        "headers": {"X-Campaign": "flu-2026"},
        "attachments": [{"filename": "letter.pdf", "content_type": "application/pdf", "content": pdf}],
        "tags": ["appointment"],
        "metadata": {"invitation_id": "123"},
        "tracking": {"opens": true, "clicks": false}
    });
    parse_message(json.to_string().as_bytes(), None).unwrap_or_else(|e| panic!("{e}"))
}

fn simple_message(recipients: usize) -> OutboundMessage {
    let to: Vec<String> = (0..recipients)
        .map(|i| format!("p{i}@example.org"))
        .collect();
    let json = serde_json::json!({
        "id": "m-1", "from": "ada@clinic.example", "to": to, "subject": "s", "text": "t"
    });
    parse_message(json.to_string().as_bytes(), None).unwrap_or_else(|e| panic!("{e}"))
}

/// A local port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    drop(listener);
    addr
}

#[tokio::test]
async fn rich_message_arrives_with_the_right_envelope_and_mime() {
    // The rich message every real provider is tested with (`gateway_tests::rich_message`).
    let sink = Sink::start(Script::default()).await;
    let accepted = plain(sink.addr)
        .send(&gateway_tests::rich_message(), NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(accepted.provider_message_id.as_deref(), Some("Q4711"));
    assert_eq!(accepted.substituted_sender, None);

    let received = sink.received();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.mail_from, "zoe@clinic.example");
    assert_eq!(
        got.rcpt_to,
        [
            "patient@example.org",
            "b@example.org",
            "family@example.org",
            "archive@clinic.example"
        ]
    );
    let parsed = MessageParser::default()
        .parse(&got.data)
        .unwrap_or_else(|| panic!("unparseable"));
    assert_eq!(parsed.subject(), Some(gateway_tests::RICH_SUBJECT));
    assert_eq!(
        parsed.from().and_then(|a| a.first()).and_then(|a| a.name()),
        Some("Dr. Zoë Müller")
    );
    assert!(
        parsed.bcc().is_none(),
        "Bcc must not reach the relay's headers"
    );
    assert!(!String::from_utf8_lossy(&got.data).contains("archive@clinic.example"));
    assert_eq!(
        parsed.header_raw(GATEWAY_ID_HEADER).map(str::trim),
        Some("inv-2026-11-28-000123")
    );
    assert_eq!(
        parsed.body_html(0).as_deref(),
        Some("<p>Guten Tag,</p><p>Ihr Befund liegt bei.</p>")
    );
    let pdf = parsed
        .attachment(0)
        .unwrap_or_else(|| panic!("no attachment"));
    assert_eq!(pdf.attachment_name(), Some("befund.pdf"));
    assert_eq!(pdf.contents(), gateway_tests::PDF_BYTES);
}

#[tokio::test]
async fn a_lone_dot_line_survives_dot_stuffing() {
    let sink = Sink::start(Script::default()).await;
    plain(sink.addr)
        .send(&dot_line_message(), NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let received = sink.received();
    let parsed = MessageParser::default()
        .parse(&received[0].data)
        .unwrap_or_else(|| panic!("unparseable"));
    assert_eq!(
        parsed.body_text(0).as_deref(),
        Some("Guten Tag,\r\nIhr Termin ist bestätigt.\r\n.\r\nEnde")
    );
}

#[tokio::test]
async fn smtp_replies_map_to_error_classes() {
    let cases = [
        (
            Script {
                mail: Some("421 4.7.0 Try again later, closing connection"),
                ..Script::default()
            },
            ErrorClass::Throttled,
        ),
        (
            Script {
                mail: Some("530 5.7.0 Authentication required"),
                ..Script::default()
            },
            ErrorClass::Auth,
        ),
        (
            Script {
                rcpt: Some("550 5.1.1 User unknown"),
                ..Script::default()
            },
            ErrorClass::Permanent,
        ),
        (
            Script {
                rcpt: Some("452 4.5.3 Too many recipients"),
                ..Script::default()
            },
            ErrorClass::Throttled,
        ),
        (
            Script {
                data_end: Some("451 4.3.0 Local error in processing"),
                ..Script::default()
            },
            ErrorClass::Unavailable,
        ),
        (
            Script {
                data_end: Some("552 5.3.4 Message size exceeds fixed limit"),
                ..Script::default()
            },
            ErrorClass::Unsuitable,
        ),
        (
            Script {
                data_end: Some("554 5.7.1 Message rejected"),
                ..Script::default()
            },
            ErrorClass::Permanent,
        ),
    ];
    for (script, expected) in cases {
        let sink = Sink::start(script.clone()).await;
        let error = plain(sink.addr)
            .send(&simple_message(1), NOW)
            .await
            .err()
            .unwrap_or_else(|| panic!("{script:?} must fail"));
        assert_eq!(error.class(), expected, "{script:?}: {error}");
        assert!(sink.received().is_empty());
        // Reply texts may quote addresses; the error keeps only the code and the step.
        assert!(!error.to_string().contains("User unknown"), "{error}");
    }
}

#[tokio::test]
async fn timeout_after_the_content_was_sent_is_ambiguous() {
    let sink = Sink::start(Script {
        stall_after_content: true,
        ..Script::default()
    })
    .await;
    let provider = provider(
        sink.addr,
        SmtpTls::None,
        Duration::from_millis(300),
        SmtpLimits::default(),
    );
    let error = provider
        .send(&simple_message(1), NOW)
        .await
        .err()
        .unwrap_or_else(|| panic!("must time out"));
    assert_eq!(error.class(), ErrorClass::Ambiguous, "{error}");
}

#[tokio::test]
async fn connection_lost_after_the_content_was_sent_is_ambiguous() {
    let sink = Sink::start(Script {
        close_after_content: true,
        ..Script::default()
    })
    .await;
    let error = plain(sink.addr)
        .send(&simple_message(1), NOW)
        .await
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert_eq!(error.class(), ErrorClass::Ambiguous, "{error}");
}

#[tokio::test]
async fn connection_lost_before_the_content_was_sent_is_unavailable() {
    let sink = Sink::start(Script {
        rcpt: Some(""),
        ..Script::default()
    })
    .await;
    let error = plain(sink.addr)
        .send(&simple_message(1), NOW)
        .await
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert_eq!(error.class(), ErrorClass::Unavailable, "{error}");
}

#[tokio::test]
async fn timeout_before_the_content_was_sent_is_unavailable() {
    let sink = Sink::start(Script {
        greeting_stalls: true,
        ..Script::default()
    })
    .await;
    let provider = provider(
        sink.addr,
        SmtpTls::None,
        Duration::from_millis(300),
        SmtpLimits::default(),
    );
    let error = provider
        .send(&simple_message(1), NOW)
        .await
        .err()
        .unwrap_or_else(|| panic!("must time out"));
    assert_eq!(error.class(), ErrorClass::Unavailable, "{error}");
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let addr = closed_port().await;
    let error = plain(addr)
        .send(&simple_message(1), NOW)
        .await
        .err()
        .unwrap_or_else(|| panic!("nothing listens"));
    assert_eq!(error.class(), ErrorClass::Unavailable, "{error}");
    let probe = plain(addr).probe().await.err().map(|e| e.class());
    assert_eq!(probe, Some(ErrorClass::Unavailable));
}

#[tokio::test]
async fn tls_that_the_relay_cannot_speak_is_unavailable() {
    for tls in [SmtpTls::Tls, SmtpTls::Starttls] {
        let sink = Sink::start(Script::default()).await;
        let provider = provider(
            sink.addr,
            tls,
            Duration::from_secs(2),
            SmtpLimits::default(),
        );
        let error = provider
            .send(&simple_message(1), NOW)
            .await
            .err()
            .unwrap_or_else(|| panic!("{tls:?} against a plain sink must fail"));
        assert_eq!(error.class(), ErrorClass::Unavailable, "{tls:?}: {error}");
        assert!(sink.received().is_empty());
    }
}

#[tokio::test]
async fn messages_over_the_limits_are_unsuitable_without_connecting() {
    let sink = Sink::start(Script::default()).await;
    let cases = [
        (
            SmtpLimits {
                max_recipients: 2,
                ..SmtpLimits::default()
            },
            simple_message(3),
        ),
        (
            SmtpLimits {
                max_message_bytes: 1000,
                ..SmtpLimits::default()
            },
            dot_line_message(),
        ),
    ];
    for (limits, message) in cases {
        let provider = provider(sink.addr, SmtpTls::None, Duration::from_secs(2), limits);
        let error = provider
            .send(&message, NOW)
            .await
            .err()
            .unwrap_or_else(|| panic!("{limits:?} must refuse"));
        assert_eq!(error.class(), ErrorClass::Unsuitable, "{error}");
    }
    assert_eq!(sink.connections(), 0);
}

#[tokio::test]
async fn probe_connects_and_sends_nothing() {
    let sink = Sink::start(Script::default()).await;
    plain(sink.addr)
        .probe()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink.connections(), 1);
    assert!(sink.received().is_empty());
}
