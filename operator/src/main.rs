//! `axon-operator`: parses the flags, sets up logging and runs the operator (see `axon_operator::operator`).

use anyhow::Context;
use axon_operator::config::{Config, Flags};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&flags.log_level).context("invalid --log-level")?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let config = Config::from_flags(&flags)?;
    axon_operator::operator::run(config).await?;
    Ok(())
}
