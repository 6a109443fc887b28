// Hello world: greets the caller by the name in the event.
const greeting = process.env.GREETING || "Hello";

exports.handler = async (event, context) => {
  const name = event.name || "world";
  console.log(`greeting ${name} (request ${context.awsRequestId})`);
  return { message: `${greeting}, ${name}!` };
};
