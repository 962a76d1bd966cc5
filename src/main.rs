use anyhow::Context;
use wharf::config::{self, Commands, Tools};

fn main() -> anyhow::Result<()> {
    let (cli, given) = match config::parse_from(std::env::args_os()) {
        Ok(v) => v,
        Err(e) => e.exit(),
    };
    wharf::logging::init(&cli.log_level, cli.log_format).context("set up logging")?;
    raise_open_files_limit();
    match cli.command {
        Commands::Tools(Tools::VerifyBlock { dirs }) => verify_blocks(&dirs),
        Commands::Receive(args) => {
            for w in config::check_not_yet(&given)? {
                tracing::warn!("{w}");
            }
            let cfg = args.into_config()?;
            if let Some(l) = &cfg.defaulted_label {
                tracing::info!(label = %l, "no --label given; using a replica label from the hostname");
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("start runtime")?;
            rt.block_on(async move {
                let running = wharf::app::start(cfg).await?;
                let trigger = running.trigger();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    let _ = trigger.send(true);
                });
                running.wait().await?;
                Ok(())
            })
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, as Prometheus and Go programs do: each
/// tenant can hold a WAL file, and the soft default (often 1024) would bound tenants and
/// connections long before memory does. Before the configuration is read, which sizes the
/// bound on open WAL files from the limit.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("received SIGTERM"),
                _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `wharf tools verify-block`: prints each block's problems; fails if any block has one.
fn verify_blocks(dirs: &[std::path::PathBuf]) -> anyhow::Result<()> {
    use wharf::tsdb::block;
    let mut blocks = Vec::new();
    for d in dirs {
        if d.join("meta.json").exists() {
            blocks.push(d.clone());
        } else {
            blocks.extend(
                block::list_blocks(d).with_context(|| format!("list blocks in {}", d.display()))?,
            );
        }
    }
    anyhow::ensure!(!blocks.is_empty(), "no blocks found in {dirs:?}");
    let mut bad = 0;
    for b in &blocks {
        let problems = block::verify(b).with_context(|| format!("read block {}", b.display()))?;
        if problems.is_empty() {
            println!("ok {}", b.display());
        } else {
            bad += 1;
            for p in problems {
                println!("FAIL {}: {p}", b.display());
            }
        }
    }
    anyhow::ensure!(bad == 0, "{bad} of {} blocks have problems", blocks.len());
    Ok(())
}
