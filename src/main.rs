use anyhow::Context;
use wharf::config::{self, Commands};

fn main() -> anyhow::Result<()> {
    let (cli, given) = match config::parse_from(std::env::args_os()) {
        Ok(v) => v,
        Err(e) => e.exit(),
    };
    wharf::logging::init(&cli.log_level, cli.log_format).context("set up logging")?;
    match cli.command {
        Commands::Receive(args) => {
            for w in config::check_not_yet(&given)? {
                tracing::warn!("{w}");
            }
            let cfg = args.into_config()?;
            if cfg.objstore_configured {
                tracing::warn!("object storage upload is not implemented yet; blocks stay local and retention deletes none of them");
            }
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
