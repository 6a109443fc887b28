// An asynchronous worker with destinations.
//
// Callers invoke it with --invocation-type Event and do not wait. Its answer
// goes, with the request, to the success destination (the event bus
// <function>-succeeded); an error, once the retry is spent too, goes to the
// failure destination (<function>-failed). Read them with
// `flintctl subscribe-invocation-records --event-bus <function>-succeeded`.
exports.handler = async (event) => {
  if (!("image" in event)) {
    throw new Error("the task names no image");
  }
  const size = parseInt(event.size || 64, 10);
  console.log(`${event.task}: ${event.image} at ${size}x${size}`);
  return { task: event.task, image: event.image, status: "done", size: `${size}x${size}` };
};
