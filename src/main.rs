//! `mountd`: command line entry point.
use clap::Parser;
use mountd::cli::args::{Cli, Command, LogFormat};
use mountd::cli::once as app;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOUNTD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| mountd::sync::progress::LogWriter);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Human => b.init(),
    }
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::Status(s)) = &cli.command {
        std::process::exit(mountd::cli::status::command(s));
    }
    init_logging(cli.run.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = if cli.run.once {
        rt.block_on(app::run_once(&cli.run))
    } else {
        mountd::cli::service::run(&cli.run, &rt)
    };
    drop(rt);
    std::process::exit(code);
}
