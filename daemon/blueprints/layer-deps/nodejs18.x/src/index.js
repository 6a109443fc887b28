// A function that requires its dependency from a layer: the package
// `textstats` is not in this code, it is in the layer deployed with it.
const { stats } = require("textstats");

exports.handler = async (event) => stats(event.text || "");
