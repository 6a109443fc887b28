// A scheduled job: a nightly clean-up.
//
// The schedule (cron(0 3 * * ? *), every day at 03:00 UTC) invokes it with
// EventBridge's scheduled event. The job works from the event's `time`, not
// the clock, so a late or repeated firing does the same work.
const retentionDays = parseInt(process.env.RETENTION_DAYS || "30", 10);

exports.handler = async (event) => {
  const when = new Date(event.time);
  const cutoff = new Date(when.getTime() - retentionDays * 86400 * 1000).toISOString().slice(0, 10);
  console.log(`clean-up for ${event.time}: deleting what is older than ${cutoff}`);
  return {
    job: "cleanup",
    trigger: event["detail-type"],
    scheduled_for: event.time,
    delete_before: cutoff,
  };
};
