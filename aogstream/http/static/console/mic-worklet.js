// The microphone's audio as 16 kHz mono PCM16 little-endian, in 100 ms frames, for the
// realtime speech-to-text socket. Runs on the audio thread: it resamples whatever rate
// the AudioContext has (linear interpolation, enough for speech recognition) and posts
// each full frame's ArrayBuffer to the page.

const TARGET_RATE = 16000;
const FRAME_SAMPLES = 1600; // 100 ms at 16 kHz

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.pos = 0; // where the next output sample lies, in input samples of this block
    this.last = 0; // the previous block's last sample, for interpolation across blocks
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
    this.stopped = false;
    this.port.onmessage = (e) => {
      if (e.data === "stop") {
        this.stopped = true;
      }
    };
  }

  process(inputs) {
    if (this.stopped) {
      return false;
    }
    const channel = inputs[0] && inputs[0][0];
    if (!channel) {
      return true;
    }
    while (this.pos < channel.length) {
      const i = Math.floor(this.pos);
      const frac = this.pos - i;
      const a = i === 0 ? this.last : channel[i - 1];
      const b = channel[i];
      // pos counts from the previous block's last sample (index -1 here)
      const x = a + (b - a) * frac;
      const s = Math.max(-1, Math.min(1, x));
      this.frame[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.filled === FRAME_SAMPLES) {
        const out = this.frame.buffer;
        this.port.postMessage(out, [out]);
        this.frame = new Int16Array(FRAME_SAMPLES);
        this.filled = 0;
      }
      this.pos += this.step;
    }
    this.pos -= channel.length;
    this.last = channel[channel.length - 1];
    return true;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
