//! Any byte stream from the MTA side of a milter connection: the session ends (on EOF, a
//! protocol error or a limit) without a panic, whatever the packets say.
#![no_main]
use imipd::milter::{serve, EomActions, Envelope, Handler};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

struct Nothing;

impl Handler for Nothing {
    async fn end_of_message(&self, _env: Envelope) -> EomActions {
        EomActions::default()
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut mta, filter) = tokio::io::duplex(1 << 16);
        let input = data.to_vec();
        let writer = tokio::spawn(async move {
            let _ = mta.write_all(&input).await;
            let _ = mta.shutdown().await;
            // Drain what the filter answers so that it never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut mta, &mut sink).await;
        });
        let _ = serve(filter, &Nothing, Duration::from_millis(200), 1 << 20).await;
        let _ = writer.await;
    });
});
