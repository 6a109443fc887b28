//! flintctl: Flint's command-line client, named like the AWS CLI.

use std::process::ExitCode;

use clap::Parser;
use flint_daemon::cli::commands::{run, Args, OutputArg};
use flint_daemon::cli::Output;

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flintctl: {e}");
            return ExitCode::from(255);
        }
    };
    let output = match args.output {
        Some(OutputArg::Json) => Output::Json,
        Some(OutputArg::Table) => Output::Table,
        None => args.command.default_output(),
    };
    let endpoint = args
        .endpoint
        .unwrap_or_else(flint_daemon::client::default_endpoint);
    let tls = args.tls_ca.map(|ca| flint_daemon::client::ClientTls {
        ca,
        cert: args.tls_cert,
        key: args.tls_key,
        domain: None,
    });
    match rt.block_on(run(&endpoint, tls.as_ref(), output, args.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
