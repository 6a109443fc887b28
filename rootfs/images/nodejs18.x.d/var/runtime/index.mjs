// The nodejs18.x runtime: AWS's runtime interface client run on the
// function's handler from the task root (what its bin/index.mjs does,
// without the line that it prints first).
import { run } from "/var/runtime/node_modules/aws-lambda-ric/dist/index.mjs";

await run(process.env.LAMBDA_TASK_ROOT || "/var/task", process.env._HANDLER);
