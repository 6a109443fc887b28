//! flintctl: Flint's command-line client, named like the AWS CLI's `lambda`
//! commands.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use flint_daemon::cli::{self, Output};
use flint_daemon::client;
use flint_proto::node::v1 as pb;

#[derive(Parser)]
#[command(version, about = "Control a Flint node")]
struct Args {
    /// flintd endpoint: unix:PATH, a socket path, or host:port.
    #[arg(long, env = "FLINT_ENDPOINT", global = true)]
    endpoint: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputArg::Json, global = true)]
    output: OutputArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputArg {
    Json,
    Table,
}

#[derive(Subcommand)]
enum Command {
    /// Creates a function from a ZIP deployment package.
    CreateFunction {
        #[arg(long)]
        function_name: String,
        #[arg(long)]
        runtime: String,
        #[arg(long)]
        handler: String,
        /// Path of the ZIP (`fileb://` prefix accepted).
        #[arg(long)]
        zip_file: String,
        #[arg(long)]
        memory_size: Option<u32>,
        #[arg(long)]
        timeout: Option<u32>,
        /// `Variables={KEY=VALUE,...}` or `{"Variables":{...}}`.
        #[arg(long)]
        environment: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Shows a function's configuration.
    GetFunction {
        #[arg(long)]
        function_name: String,
        #[arg(long, default_value = "")]
        qualifier: String,
    },
    /// Lists functions.
    ListFunctions,
    /// Deletes a function and stops its instances.
    DeleteFunction {
        #[arg(long)]
        function_name: String,
    },
    /// Invokes a function; writes the response payload to OUTFILE.
    Invoke {
        #[arg(long)]
        function_name: String,
        /// JSON, or `file://PATH` / `fileb://PATH`.
        #[arg(long, default_value = "")]
        payload: String,
        #[arg(long, default_value = "")]
        qualifier: String,
        /// RequestResponse, Event or DryRun.
        #[arg(long, default_value = "RequestResponse")]
        invocation_type: String,
        /// None or Tail.
        #[arg(long, default_value = "None")]
        log_type: String,
        /// `raw-in-base64-out` (the default here) or `base64`.
        #[arg(long, default_value = "raw-in-base64-out")]
        cli_binary_format: String,
        /// Base64 JSON client context.
        #[arg(long, default_value = "")]
        client_context: String,
        /// Where the response payload goes (`-` for stdout).
        outfile: String,
    },
}

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
        OutputArg::Json => Output::Json,
        OutputArg::Table => Output::Table,
    };
    let endpoint = args.endpoint.unwrap_or_else(client::default_endpoint);
    match rt.block_on(run(&endpoint, output, args.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(endpoint: &str, output: Output, command: Command) -> Result<(), cli::CliError> {
    let mut c = client::functions(endpoint).await?;
    match command {
        Command::CreateFunction {
            function_name,
            runtime,
            handler,
            zip_file,
            memory_size,
            timeout,
            environment,
            description,
        } => {
            let zip = cli::read_file_arg(&zip_file)?;
            let environment: BTreeMap<String, String> = match environment {
                Some(e) => cli::parse_environment(&e)?,
                None => BTreeMap::new(),
            };
            let f = c
                .create_function(pb::CreateFunctionRequest {
                    function_name,
                    runtime,
                    handler,
                    zip_file: zip,
                    memory_size: memory_size.unwrap_or(0),
                    timeout: timeout.unwrap_or(0),
                    environment: environment.into_iter().collect(),
                    description,
                })
                .await
                .map_err(|s| cli::CliError::from_status("CreateFunction", s))?
                .into_inner();
            cli::print_configuration(&f, output);
        }
        Command::GetFunction {
            function_name,
            qualifier,
        } => {
            let r = c
                .get_function(pb::GetFunctionRequest {
                    function_name,
                    qualifier,
                })
                .await
                .map_err(|s| cli::CliError::from_status("GetFunction", s))?
                .into_inner();
            cli::print_get_function(&r, output);
        }
        Command::ListFunctions => {
            let r = c
                .list_functions(pb::ListFunctionsRequest {})
                .await
                .map_err(|s| cli::CliError::from_status("ListFunctions", s))?
                .into_inner();
            cli::print_functions(&r.functions, output);
        }
        Command::DeleteFunction { function_name } => {
            c.delete_function(pb::DeleteFunctionRequest { function_name })
                .await
                .map_err(|s| cli::CliError::from_status("DeleteFunction", s))?;
        }
        Command::Invoke {
            function_name,
            payload,
            qualifier,
            invocation_type,
            log_type,
            cli_binary_format,
            client_context,
            outfile,
        } => {
            let payload = cli::read_payload(&payload, &cli_binary_format)?;
            let invocation_type = cli::invocation_type(&invocation_type)?;
            let log_type = cli::log_type(&log_type)?;
            let r = c
                .invoke(pb::InvokeRequest {
                    function_name,
                    qualifier,
                    invocation_type: invocation_type as i32,
                    log_type: log_type as i32,
                    payload,
                    client_context,
                })
                .await
                .map_err(|s| cli::CliError::from_status("Invoke", s))?
                .into_inner();
            cli::write_outfile(&outfile, &r.payload)?;
            cli::print_invoke(&r, output);
        }
    }
    Ok(())
}
