// Recognisable, reproducible write contents for the crash test: (tag, word index) in every 8 bytes.
exports.fillPattern = (buf, tag) => {
  for (let i = 0; i + 8 <= buf.length; i += 8) {
    buf.writeUInt32LE(tag, i);
    buf.writeUInt32LE(i >>> 3, i + 4);
  }
  return buf;
};
