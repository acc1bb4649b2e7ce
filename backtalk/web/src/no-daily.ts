// Stands in for @daily-co/daily-js in the bundle (build.mjs aliases it here).
//
// SmallWebRTCTransport imports Daily's SDK only for its default media manager, which
// the page never uses (it passes MicrophoneMediaManager): leaving Daily out keeps
// 250 kB of code, and any chance of loading Daily's call machine from its CDN, out of
// the page.

function unavailable(): never {
  throw new Error(
    "Daily's SDK is not in Backtalk's bundle: give SmallWebRTCTransport a mediaManager.",
  );
}

export default { getCallInstance: unavailable, createCallObject: unavailable };
