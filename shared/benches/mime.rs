//! MIME build of a 10 KB message (text and HTML alternatives, 5 KB each) with one 100 KB PDF
//! attachment, and the parse of its queue body (what the sender does per message before
//! routing).
//!
//! ```text
//! cargo bench -p gateway-core --bench mime
//! ```

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::hint::black_box;

use base64::Engine as _;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway_core::message::parse_message;
use gateway_core::mime;

/// 2026-11-28T12:00:00Z.
const NOW: i64 = 1_795_867_200_000;

fn body() -> Vec<u8> {
    let paragraph = "Your appointment at the Northside clinic is confirmed for Monday at 9:30. \
                     Please bring your insurance card and arrive ten minutes early. Café, naïve \
                     résumé: non-ASCII text is encoded too.\n";
    let text: String = paragraph.repeat(5_000 / paragraph.len() + 1);
    let html = format!(
        "<html><body><p>{}</p></body></html>",
        text.replace('\n', "</p><p>")
    );
    // Deterministic, incompressible-looking bytes: a PDF header then a xorshift stream.
    let mut pdf = b"%PDF-1.7\n".to_vec();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while pdf.len() < 100 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pdf.extend_from_slice(&x.to_le_bytes());
    }
    pdf.truncate(100 * 1024);
    serde_json::json!({
        "id": "bench-0001",
        "from": "Northside Clinic <appointments@clinic.example>",
        "to": ["Jane Patient <jane@example.org>"],
        "cc": ["records@clinic.example"],
        "subject": "Your appointment on Monday — confirmation",
        "text": text,
        "html": html,
        "attachments": [{
            "filename": "appointment-confirmation.pdf",
            "content_type": "application/pdf",
            "content": base64::engine::general_purpose::STANDARD.encode(&pdf),
        }],
    })
    .to_string()
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let body = body();
    let message = parse_message(&body, None).expect("benchmark message is valid");
    let built = mime::build(&message, NOW);
    let mut group = c.benchmark_group("mime");
    group.throughput(Throughput::Bytes(built.bytes().len() as u64));
    group.bench_function("build 10 KB + 100 KB attachment", |b| {
        b.iter(|| black_box(mime::build(black_box(&message), NOW)).encoded_size());
    });
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse queue body 10 KB + 100 KB attachment", |b| {
        b.iter(|| black_box(parse_message(black_box(&body), None)).is_ok());
    });
    group.finish();
    println!(
        "queue body {} bytes, MIME {} bytes",
        body.len(),
        built.bytes().len()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
