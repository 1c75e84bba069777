//! `imipd run`: opens the store and serves the front doors the config enables.

use crate::cli::{load_config, open_store, Args, CliError};

pub fn run(args: &Args) -> Result<i32, CliError> {
    let cfg = load_config(args)?;
    let _store = open_store(&cfg)?;
    eprintln!("imipd: store open at {}", cfg.data_dir.display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(crate::cli::EX_IOERR, e.to_string()))?;
    rt.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    Ok(0)
}
