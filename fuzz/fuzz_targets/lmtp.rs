//! Any byte stream from the client side of an LMTP session: the server answers and ends the
//! session without a panic or a hang (bounded lines, strict end of DATA).
#![no_main]
use imipd::lmtp::{serve, Deliver, Reply, Transaction};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

struct Accept;

impl Deliver for Accept {
    async fn deliver(&self, t: Transaction) -> Vec<Reply> {
        t.rcpt_to
            .iter()
            .map(|_| Reply::new(250, "2.0.0", "ok"))
            .collect()
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let input = data.to_vec();
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        });
        let _ = serve(server, "fuzz.example", &Accept, 1 << 20, Duration::from_millis(200)).await;
        let _ = writer.await;
    });
});
