use clap::Parser;
use hookline_ingest::{Ingest, settings::Settings, shutdown_signal};
use tokio_util::sync::CancellationToken;

/// Hookline ingest: the event and management API.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Settings file (TOML); HOOKLINE_CONFIG names one too. HOOKLINE__… variables win.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = hookline_shared::settings::config_path(args.config);
    let settings = Settings::load(path.as_deref())?;
    let telemetry =
        hookline_shared::telemetry::init(&settings.log, &settings.telemetry, "hookline-ingest")?;
    let ingest = Ingest::bind(settings).await?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; draining");
        trigger.cancel();
    });
    let ran = ingest.run(shutdown).await;
    telemetry.shutdown().await;
    ran
}
