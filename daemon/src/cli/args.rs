//! flintctl's command line: the commands, named like the AWS CLI's
//! `aws lambda` commands, and their options.

use clap::{Parser, Subcommand, ValueEnum};

use super::Output;

#[derive(Parser)]
#[command(name = "flintctl", version, about = "Control a Flint node")]
pub struct Args {
    /// flintd endpoint: unix:PATH, a socket path, or host:port.
    #[arg(long, env = "FLINT_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// For a TCP endpoint (mutual TLS): the CA flintd's certificate chains to.
    #[arg(long, env = "FLINT_TLS_CA", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// For a TCP endpoint: this client's certificate (PEM).
    #[arg(long, env = "FLINT_TLS_CERT", global = true)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// For a TCP endpoint: this client's private key (PEM).
    #[arg(long, env = "FLINT_TLS_KEY", global = true)]
    pub tls_key: Option<std::path::PathBuf>,
    /// Output format: json (the default of the AWS CLI's commands) or table
    /// (the default of logs, node and instances).
    #[arg(long, value_enum, global = true)]
    pub output: Option<OutputArg>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputArg {
    Json,
    Table,
}

#[derive(Subcommand)]
pub enum Command {
    /// Creates a function from a ZIP deployment package, or from a
    /// blueprint with its presets (`--blueprint`, see `init --list`).
    CreateFunction {
        #[arg(long)]
        function_name: String,
        /// With `--blueprint`: which of its runtimes (where it has several).
        #[arg(long, required_unless_present = "blueprint")]
        runtime: Option<String>,
        #[arg(
            long,
            required_unless_present = "blueprint",
            conflicts_with = "blueprint"
        )]
        handler: Option<String>,
        /// Path of the ZIP (`fileb://` prefix accepted).
        #[arg(
            long,
            required_unless_present = "blueprint",
            conflicts_with = "blueprint"
        )]
        zip_file: Option<String>,
        /// A blueprint: its code, its layer and its presets, in one command
        /// (the other options given override its presets).
        #[arg(long)]
        blueprint: Option<String>,
        #[arg(long)]
        memory_size: Option<u32>,
        #[arg(long)]
        timeout: Option<u32>,
        /// `Variables={KEY=VALUE,...}` or `{"Variables":{...}}`.
        #[arg(long)]
        environment: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Layer version ARNs, merged in order into /opt.
        #[arg(long, num_args = 1..)]
        layers: Vec<String>,
        /// `Size=MB` for /tmp.
        #[arg(long)]
        ephemeral_storage: Option<String>,
        /// `TargetArn=arn:aws:sqs:...` (or `{"TargetArn":"..."}`): the
        /// dead-letter queue of asynchronous events.
        #[arg(long)]
        dead_letter_config: Option<String>,
        /// Network mode: `egress` (default) or `none` (no traffic at all).
        #[arg(long, value_parser = ["egress", "none"])]
        network_mode: Option<String>,
        /// An allowed destination, `CIDR[,tcp|udp|all[,PORT|FROM-TO]]`
        /// (repeatable); none: every public destination.
        #[arg(long = "egress-rule")]
        egress_rules: Vec<String>,
    },
    /// Lists the blueprints (`--list`), or writes one as a project into
    /// DIR: its code, `flint.json` (its presets), a sample event and a
    /// README. Nothing is sent to flintd.
    ///
    /// With `--app-template NAME DIR`: writes an application (several
    /// functions and what they use, `template.yaml`, `pipeline.yaml`,
    /// sample events) and makes DIR a Git repository (branch `main`).
    Init {
        #[arg(long, conflicts_with_all = ["blueprint", "dir", "app_template"])]
        list: bool,
        #[arg(long, required_unless_present_any = ["list", "app_template"])]
        blueprint: Option<String>,
        /// An application template (see `init --list`).
        #[arg(long, conflicts_with_all = ["blueprint", "runtime"])]
        app_template: Option<String>,
        /// Which of the blueprint's runtimes (where it has several).
        #[arg(long)]
        runtime: Option<String>,
        /// A new (or empty) folder.
        #[arg(required_unless_present = "list")]
        dir: Option<std::path::PathBuf>,
    },
    /// Deploys the project in DIR (written by `init`): publishes its
    /// layer, creates the function with its presets (or updates its code
    /// and settings where it exists), and publishes a version where
    /// `flint.json` says so.
    ///
    /// With `--template-file` and `--stack-name`: deploys a SAM template
    /// as a stack. Its `CodeUri` / `ContentUri` folders are zipped here
    /// and sent with it; flintd shows the change set, applies it, and
    /// rolls the stack back on any failure. Waits for the end unless
    /// `--no-wait`.
    Deploy {
        #[arg(
            long,
            required_unless_present = "template_file",
            conflicts_with = "template_file"
        )]
        function_name: Option<String>,
        #[arg(default_value = ".", conflicts_with = "template_file")]
        dir: std::path::PathBuf,
        #[arg(long, requires = "stack_name")]
        template_file: Option<std::path::PathBuf>,
        #[arg(long, requires = "template_file")]
        stack_name: Option<String>,
        /// `Key=Value` (repeatable, or several after one flag).
        #[arg(long, num_args = 1.., requires = "template_file")]
        parameter_overrides: Vec<String>,
        /// Only show the change set.
        #[arg(long, requires = "template_file")]
        no_execute_changeset: bool,
        /// Seconds that one minute of a DeploymentPreference lasts
        /// (default 60; shorter for tests and demonstrations).
        #[arg(long, requires = "template_file")]
        deployment_minute_seconds: Option<u32>,
        /// Return once the change set is applying, without waiting.
        #[arg(long, requires = "template_file")]
        no_wait: bool,
    },
    /// Pipelines: every push to a branch of a repository on the node is
    /// built, tested on a staging stack and deployed.
    Pipeline {
        #[command(subcommand)]
        command: PipelineCommand,
    },
    /// Shows a stack (or every stack): status, parameters, outputs.
    DescribeStacks {
        #[arg(long)]
        stack_name: Option<String>,
    },
    /// Lists stacks, deleted ones included.
    ListStacks,
    /// Deletes a stack and its resources (dependents first). Waits for
    /// the end unless `--no-wait`.
    DeleteStack {
        #[arg(long)]
        stack_name: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// A stack's events, newest first.
    DescribeStackEvents {
        #[arg(long)]
        stack_name: String,
    },
    /// A stack's resources and their physical names.
    ListStackResources {
        #[arg(long)]
        stack_name: String,
    },
    /// Shows a function (at a version or alias with --qualifier).
    GetFunction {
        #[arg(long)]
        function_name: String,
        #[arg(long, default_value = "")]
        qualifier: String,
    },
    /// Lists functions.
    ListFunctions,
    /// Deletes a function with its versions and aliases, and stops its instances.
    DeleteFunction {
        #[arg(long)]
        function_name: String,
    },
    /// Replaces a function's code.
    UpdateFunctionCode {
        #[arg(long)]
        function_name: String,
        #[arg(long)]
        zip_file: String,
        /// Also publish a version.
        #[arg(long)]
        publish: bool,
        /// Update only if the function's RevisionId is still this one.
        #[arg(long)]
        revision_id: Option<String>,
    },
    /// Changes a function's configuration; only the given settings change.
    UpdateFunctionConfiguration {
        #[arg(long)]
        function_name: String,
        #[arg(long)]
        handler: Option<String>,
        #[arg(long)]
        runtime: Option<String>,
        #[arg(long)]
        memory_size: Option<u32>,
        #[arg(long)]
        timeout: Option<u32>,
        #[arg(long)]
        environment: Option<String>,
        /// Replaces the layers (none given: no change; use --no-layers to remove them).
        #[arg(long, num_args = 1..)]
        layers: Option<Vec<String>>,
        /// Removes every layer.
        #[arg(long, conflicts_with = "layers")]
        no_layers: bool,
        #[arg(long)]
        ephemeral_storage: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Update only if the function's RevisionId is still this one.
        #[arg(long)]
        revision_id: Option<String>,
        /// `TargetArn=ARN`; `TargetArn=` removes the dead-letter queue.
        #[arg(long)]
        dead_letter_config: Option<String>,
        /// Network mode: `egress` (default) or `none` (no traffic at all).
        #[arg(long, value_parser = ["egress", "none"])]
        network_mode: Option<String>,
        /// An allowed destination, `CIDR[,tcp|udp|all[,PORT|FROM-TO]]`
        /// (repeatable; replaces the rules); none given with --network-mode:
        /// every public destination.
        #[arg(long = "egress-rule")]
        egress_rules: Vec<String>,
    },
    /// Invokes a function; writes the response payload to OUTFILE.
    Invoke {
        #[arg(long)]
        function_name: String,
        /// JSON, or `file://PATH` / `fileb://PATH`.
        #[arg(long, default_value = "")]
        payload: String,
        /// A version number or an alias.
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
    /// Publishes $LATEST as an immutable version.
    PublishVersion {
        #[arg(long)]
        function_name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Lists $LATEST and the published versions.
    ListVersionsByFunction {
        #[arg(long)]
        function_name: String,
    },
    /// Creates an alias for a version, optionally splitting traffic.
    CreateAlias {
        #[arg(long)]
        function_name: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        function_version: String,
        #[arg(long, default_value = "")]
        description: String,
        /// `AdditionalVersionWeights={VERSION=WEIGHT}`.
        #[arg(long)]
        routing_config: Option<String>,
    },
    /// Changes an alias.
    UpdateAlias {
        #[arg(long)]
        function_name: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        function_version: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// `AdditionalVersionWeights={VERSION=WEIGHT}`; `AdditionalVersionWeights={}` removes it.
        #[arg(long)]
        routing_config: Option<String>,
    },
    GetAlias {
        #[arg(long)]
        function_name: String,
        #[arg(long)]
        name: String,
    },
    ListAliases {
        #[arg(long)]
        function_name: String,
    },
    DeleteAlias {
        #[arg(long)]
        function_name: String,
        #[arg(long)]
        name: String,
    },
    /// Reserves concurrency for a function (and caps it there; 0 throttles it).
    PutFunctionConcurrency {
        #[arg(long)]
        function_name: String,
        #[arg(long, allow_negative_numbers = true)]
        reserved_concurrent_executions: i64,
    },
    GetFunctionConcurrency {
        #[arg(long)]
        function_name: String,
    },
    DeleteFunctionConcurrency {
        #[arg(long)]
        function_name: String,
    },
    /// Keeps instances of a version or alias initialised at all times.
    PutProvisionedConcurrencyConfig {
        #[arg(long)]
        function_name: String,
        #[arg(long)]
        qualifier: String,
        #[arg(long, allow_negative_numbers = true)]
        provisioned_concurrent_executions: i64,
    },
    GetProvisionedConcurrencyConfig {
        #[arg(long)]
        function_name: String,
        #[arg(long)]
        qualifier: String,
    },
    ListProvisionedConcurrencyConfigs {
        #[arg(long)]
        function_name: String,
    },
    DeleteProvisionedConcurrencyConfig {
        #[arg(long)]
        function_name: String,
        #[arg(long)]
        qualifier: String,
    },
    /// Application Auto Scaling of provisioned concurrency (`aws
    /// application-autoscaling register-scalable-target`): the range an
    /// alias's or version's provisioned concurrency follows load in.
    RegisterScalableTarget {
        /// `function:NAME:ALIAS` or `function:NAME:VERSION`.
        #[arg(long)]
        resource_id: String,
        #[command(flatten)]
        dimension: ScalingDimension,
        #[arg(long, allow_negative_numbers = true)]
        min_capacity: i64,
        #[arg(long, allow_negative_numbers = true)]
        max_capacity: i64,
    },
    DescribeScalableTargets {
        #[arg(long, default_value = "lambda")]
        service_namespace: String,
        #[arg(long, num_args = 1..)]
        resource_ids: Vec<String>,
    },
    DeregisterScalableTarget {
        #[arg(long)]
        resource_id: String,
        #[command(flatten)]
        dimension: ScalingDimension,
    },
    /// A target tracking policy, e.g. `--target-tracking-scaling-policy-configuration
    /// '{"TargetValue": 0.7, "PredefinedMetricSpecification":
    /// {"PredefinedMetricType": "LambdaProvisionedConcurrencyUtilization"}}'`.
    PutScalingPolicy {
        #[arg(long)]
        policy_name: String,
        #[arg(long)]
        resource_id: String,
        #[command(flatten)]
        dimension: ScalingDimension,
        #[arg(long, default_value = "TargetTrackingScaling")]
        policy_type: String,
        /// JSON (or `file://PATH`).
        #[arg(long)]
        target_tracking_scaling_policy_configuration: String,
    },
    DescribeScalingPolicies {
        #[arg(long, default_value = "lambda")]
        service_namespace: String,
        #[arg(long)]
        resource_id: Option<String>,
        #[arg(long, num_args = 1..)]
        policy_names: Vec<String>,
    },
    DeleteScalingPolicy {
        #[arg(long)]
        policy_name: String,
        #[arg(long)]
        resource_id: String,
        #[command(flatten)]
        dimension: ScalingDimension,
    },
    DescribeScalingActivities {
        #[arg(long, default_value = "lambda")]
        service_namespace: String,
        #[arg(long)]
        resource_id: Option<String>,
    },
    /// How a function's asynchronous events are retried, how old they may
    /// grow, and where their records go; replaces any earlier one.
    /// `--destination-config '{"OnSuccess":{"Destination":ARN},"OnFailure":{"Destination":ARN}}'`.
    PutFunctionEventInvokeConfig {
        #[command(flatten)]
        config: EventConfigArgs,
    },
    /// Changes only the named settings of an event invoke configuration.
    UpdateFunctionEventInvokeConfig {
        #[command(flatten)]
        config: EventConfigArgs,
    },
    GetFunctionEventInvokeConfig {
        #[arg(long)]
        function_name: String,
        #[arg(long, default_value = "")]
        qualifier: String,
    },
    ListFunctionEventInvokeConfigs {
        #[arg(long)]
        function_name: String,
    },
    DeleteFunctionEventInvokeConfig {
        #[arg(long)]
        function_name: String,
        #[arg(long, default_value = "")]
        qualifier: String,
    },
    /// Reads the invocation records sent to an event-bus destination
    /// (`arn:aws:events:REGION:ACCOUNT:event-bus/NAME`), one JSON per line.
    SubscribeInvocationRecords {
        /// The bus's name.
        #[arg(long)]
        event_bus: String,
        /// Only records after this sequence number (the cursor to resume from).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep reading new records as they are written.
        #[arg(long)]
        follow: bool,
    },
    /// The queue of asynchronous events per function: waiting, in flight,
    /// the oldest's age, counts and the last dropped events.
    EventQueues,
    /// Statistics of one of Lambda's function metrics (Invocations,
    /// Errors, Throttles, Duration, ...) per period, over the window flintd
    /// keeps: shaped like `aws cloudwatch get-metric-statistics` with the
    /// function as its dimension.
    GetMetricStatistics {
        #[arg(long)]
        metric_name: String,
        #[arg(long)]
        function_name: String,
        /// An alias or a version; default: every invocation.
        #[arg(long, default_value = "")]
        qualifier: String,
        /// RFC 3339 or Unix seconds; default: an hour before the end.
        #[arg(long)]
        start_time: Option<String>,
        /// RFC 3339 or Unix seconds; default: now.
        #[arg(long)]
        end_time: Option<String>,
        /// Seconds per datapoint.
        #[arg(long, default_value_t = 60)]
        period: u32,
        /// SampleCount, Average, Sum, Minimum, Maximum.
        #[arg(long, num_args = 1.., default_values_t = ["SampleCount".to_string(), "Sum".to_string(), "Average".to_string(), "Minimum".to_string(), "Maximum".to_string()])]
        statistics: Vec<String>,
    },
    /// Creates a queue on the node's broker (`aws sqs create-queue`).
    CreateQueue {
        #[arg(long)]
        queue_name: String,
        /// SQS's attributes, as `Key=Value,Key=Value` or a JSON object:
        /// VisibilityTimeout, DelaySeconds, MessageRetentionPeriod,
        /// FifoQueue, ContentBasedDeduplication, RedrivePolicy (JSON).
        #[arg(long)]
        attributes: Option<String>,
    },
    DeleteQueue {
        #[arg(long)]
        queue_name: String,
    },
    ListQueues {
        #[arg(long, default_value = "")]
        queue_name_prefix: String,
    },
    /// A queue's ARN, visibility timeout and message counts.
    GetQueueAttributes {
        #[arg(long)]
        queue_name: String,
    },
    SendMessage {
        #[arg(long)]
        queue_name: String,
        #[arg(long)]
        message_body: String,
        /// Standard queues: seconds the message stays hidden.
        #[arg(long)]
        delay_seconds: Option<u32>,
        /// FIFO queues: the message group.
        #[arg(long, default_value = "")]
        message_group_id: String,
        /// FIFO queues: the deduplication id.
        #[arg(long, default_value = "")]
        message_deduplication_id: String,
    },
    /// Hands out messages; each stays hidden for the visibility timeout
    /// unless it is deleted.
    ReceiveMessage {
        #[arg(long)]
        queue_name: String,
        #[arg(long, default_value_t = 1)]
        max_number_of_messages: u32,
        /// Seconds these messages stay hidden (the queue's by default).
        #[arg(long)]
        visibility_timeout: Option<u32>,
    },
    DeleteMessage {
        #[arg(long)]
        queue_name: String,
        #[arg(long)]
        receipt_handle: String,
    },
    PurgeQueue {
        #[arg(long)]
        queue_name: String,
    },
    /// Invokes a function asynchronously on a schedule (shaped like
    /// `aws scheduler create-schedule`).
    CreateSchedule {
        #[command(flatten)]
        schedule: ScheduleArgs,
    },
    /// Replaces a schedule's settings.
    UpdateSchedule {
        #[command(flatten)]
        schedule: ScheduleArgs,
    },
    GetSchedule {
        #[arg(long)]
        name: String,
    },
    DeleteSchedule {
        #[arg(long)]
        name: String,
    },
    ListSchedules,
    /// Creates a Kinesis-shaped stream on the node's broker.
    CreateStream {
        #[arg(long)]
        stream_name: String,
        #[arg(long, default_value_t = 1)]
        shard_count: u32,
        #[arg(long)]
        retention_period_hours: Option<u32>,
    },
    DeleteStream {
        #[arg(long)]
        stream_name: String,
    },
    ListStreams,
    DescribeStream {
        #[arg(long)]
        stream_name: String,
    },
    /// Writes a record; `--data` is the record's bytes as text (the AWS
    /// CLI's `raw-in-base64-out`).
    PutRecord {
        #[arg(long)]
        stream_name: String,
        #[arg(long)]
        partition_key: String,
        #[arg(long)]
        data: String,
    },
    GetShardIterator {
        #[arg(long)]
        stream_name: String,
        #[arg(long)]
        shard_id: String,
        /// TRIM_HORIZON, LATEST, AT_TIMESTAMP, AT_SEQUENCE_NUMBER or
        /// AFTER_SEQUENCE_NUMBER.
        #[arg(long)]
        shard_iterator_type: String,
        #[arg(long, default_value = "")]
        starting_sequence_number: String,
        /// Seconds since the epoch, for AT_TIMESTAMP.
        #[arg(long, default_value_t = 0.0)]
        timestamp: f64,
    },
    /// Reads records (their `Data` in base64, as the AWS CLI prints it).
    GetRecords {
        #[arg(long)]
        shard_iterator: String,
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Feeds a function from a queue on the node's broker: batches of its
    /// messages, deleted when the function succeeds.
    CreateEventSourceMapping {
        /// `arn:aws:sqs:REGION:ACCOUNT:NAME`.
        #[arg(long)]
        event_source_arn: String,
        /// A name, `NAME:QUALIFIER`, or a function ARN.
        #[arg(long)]
        function_name: String,
        /// Streams: TRIM_HORIZON, LATEST or AT_TIMESTAMP.
        #[arg(long, default_value = "")]
        starting_position: String,
        /// Streams, AT_TIMESTAMP: seconds since the epoch.
        #[arg(long)]
        starting_position_timestamp: Option<f64>,
        #[command(flatten)]
        settings: MappingArgs,
    },
    /// Changes only the named settings of a mapping.
    UpdateEventSourceMapping {
        #[arg(long)]
        uuid: String,
        #[arg(long, default_value = "")]
        function_name: String,
        #[command(flatten)]
        settings: MappingArgs,
    },
    GetEventSourceMapping {
        #[arg(long)]
        uuid: String,
    },
    DeleteEventSourceMapping {
        #[arg(long)]
        uuid: String,
    },
    /// Every mapping with its state, lag, batches, failures and last error.
    ListEventSourceMappings {
        #[arg(long, default_value = "")]
        event_source_arn: String,
        #[arg(long, default_value = "")]
        function_name: String,
    },
    /// Publishes a layer version from a ZIP.
    PublishLayerVersion {
        #[arg(long)]
        layer_name: String,
        #[arg(long)]
        zip_file: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, num_args = 1..)]
        compatible_runtimes: Vec<String>,
    },
    /// Lists layers (their latest versions).
    ListLayers,
    ListLayerVersions {
        #[arg(long)]
        layer_name: String,
    },
    GetLayerVersion {
        #[arg(long)]
        layer_name: String,
        #[arg(long)]
        version_number: u64,
    },
    /// Deletes a layer version; functions using it keep working.
    DeleteLayerVersion {
        #[arg(long)]
        layer_name: String,
        #[arg(long)]
        version_number: u64,
    },
    /// Function logs.
    Logs {
        #[command(subcommand)]
        action: LogsAction,
    },
    /// The node.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Lists instances, or stops them.
    Instances {
        #[arg(long)]
        function_name: Option<String>,
        #[command(subcommand)]
        action: Option<InstancesAction>,
    },
}

#[derive(Subcommand)]
pub enum LogsAction {
    /// Prints a function's log lines; with --follow, new ones as they come.
    Tail {
        function_name: String,
        #[arg(long)]
        follow: bool,
        /// Only lines this recent: 30s, 10m, 2h, 1d.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum NodeAction {
    /// Version, engine, accelerator, kernel, images, capacity and use.
    Info,
}

#[derive(Subcommand)]
pub enum InstancesAction {
    /// Stops one instance, or every instance of a function.
    Stop {
        instance_id: Option<String>,
        #[arg(long)]
        function_name: Option<String>,
    },
}

impl Command {
    /// Operators' commands print tables by default; the AWS CLI's, JSON.
    pub fn default_output(&self) -> Output {
        match self {
            Command::Logs { .. }
            | Command::Node { .. }
            | Command::Instances { .. }
            | Command::EventQueues => Output::Table,
            _ => Output::Json,
        }
    }
}

/// The namespace and dimension of an Application Auto Scaling call: only
/// Lambda's provisioned concurrency, the defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct ScalingDimension {
    #[arg(long, default_value = "lambda")]
    pub service_namespace: String,
    #[arg(long, default_value = "lambda:function:ProvisionedConcurrency")]
    pub scalable_dimension: String,
}

/// The settings of a put or an update of an event invoke configuration.
#[derive(clap::Args)]
pub struct EventConfigArgs {
    #[arg(long)]
    pub function_name: String,
    #[arg(long, default_value = "")]
    pub qualifier: String,
    #[arg(long)]
    pub maximum_retry_attempts: Option<u32>,
    #[arg(long)]
    pub maximum_event_age_in_seconds: Option<u32>,
    /// JSON: `{"OnSuccess":{"Destination":ARN},"OnFailure":{"Destination":ARN}}`.
    #[arg(long)]
    pub destination_config: Option<String>,
}

/// The settings of a create or an update of an event source mapping.
#[derive(clap::Args)]
pub struct MappingArgs {
    /// The mapping polls (the default on create).
    #[arg(long, conflicts_with = "no_enabled")]
    pub enabled: bool,
    /// The mapping is kept but does not poll.
    #[arg(long)]
    pub no_enabled: bool,
    /// 1 to 10000 (10 by default); over 10 needs a batching window.
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// 0 to 300.
    #[arg(long)]
    pub maximum_batching_window_in_seconds: Option<u32>,
    /// JSON: `{"Filters":[{"Pattern":"{...}"}]}`; `{"Filters":[]}` removes them.
    #[arg(long)]
    pub filter_criteria: Option<String>,
    /// `ReportBatchItemFailures`, or `""` for none.
    #[arg(long, num_args = 0..)]
    pub function_response_types: Option<Vec<String>>,
    /// `MaximumConcurrency=N` or `{"MaximumConcurrency":N}`; `{}` removes it.
    #[arg(long)]
    pub scaling_config: Option<String>,
    /// Streams: 1 to 10 batches of a shard at once (order kept per
    /// partition key).
    #[arg(long)]
    pub parallelization_factor: Option<u32>,
    /// Streams: split a failed batch in two and retry each half.
    #[arg(long, conflicts_with = "no_bisect_batch_on_function_error")]
    pub bisect_batch_on_function_error: bool,
    #[arg(long)]
    pub no_bisect_batch_on_function_error: bool,
    /// Streams: -1 (until the record expires) to 10000.
    #[arg(long, allow_hyphen_values = true)]
    pub maximum_retry_attempts: Option<i64>,
    /// Streams: -1, or 60 to 604800.
    #[arg(long, allow_hyphen_values = true)]
    pub maximum_record_age_in_seconds: Option<i64>,
    /// Streams: `{"OnFailure":{"Destination":QUEUE_ARN}}`.
    #[arg(long)]
    pub destination_config: Option<String>,
    /// Streams: 0 to 900.
    #[arg(long)]
    pub tumbling_window_in_seconds: Option<u32>,
}

/// A schedule's settings.
#[derive(clap::Args)]
pub struct ScheduleArgs {
    #[arg(long)]
    pub name: String,
    /// `rate(5 minutes)`, `cron(0 9 ? * MON-FRI *)` or `at(2026-12-24T18:00:00)`.
    #[arg(long)]
    pub schedule_expression: String,
    /// An IANA time zone for cron and at (UTC by default).
    #[arg(long, default_value = "")]
    pub schedule_expression_timezone: String,
    /// JSON: `{"Arn": FUNCTION_ARN, "Input": "...", "RoleArn": "..."}`.
    #[arg(long)]
    pub target: String,
    /// ENABLED or DISABLED.
    #[arg(long, default_value = "ENABLED")]
    pub state: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// JSON: `{"Mode": "OFF"}` (the only mode).
    #[arg(long, default_value = "")]
    pub flexible_time_window: String,
}

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Connects a repository's branch to a stack; flintd runs the
    /// pipeline for its current commit and for every push after.
    Create {
        #[arg(long)]
        name: String,
        /// The repository (a folder on the node; bare or not).
        #[arg(long)]
        repository: std::path::PathBuf,
        #[arg(long, default_value = "main")]
        branch: String,
        #[arg(long)]
        stack_name: String,
    },
    /// Lists the pipelines.
    List,
    /// A pipeline's runs, newest first: commit, stages, logs, outcome.
    Runs { name: String },
    /// Deletes a pipeline and its runs (not the stacks it deployed).
    Delete {
        #[arg(long)]
        name: String,
    },
}
