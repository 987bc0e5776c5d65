// The page's AudioWorklet: the microphone's samples (the AudioContext runs at 16 kHz, so they are 16 kHz),
// down-mixed to mono, posted to the page as Float32Array buffers of `samplesPerMessage` samples; a "flush"
// message from the page posts what is left (then "flushed").
class Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = (options.processorOptions && options.processorOptions.samplesPerMessage) || 1600;
    this.buffer = new Float32Array(this.size);
    this.filled = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.post(this.filled);
        this.port.postMessage("flushed");
      }
    };
  }

  post(count) {
    if (count > 0) {
      const out = this.buffer.slice(0, count);
      this.port.postMessage(out.buffer, [out.buffer]);
    }
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (let c = 0; c < channels.length; c++) sum += channels[c][i];
      this.buffer[this.filled++] = sum / channels.length;
      if (this.filled === this.size) this.post(this.size);
    }
    return true;
  }
}

registerProcessor("capture", Capture);
