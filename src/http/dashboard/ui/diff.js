// A line diff of two texts (two config revisions), by longest common
// subsequence.

/** Past this many cells (lines a x lines b) the diff gives up and shows both whole. */
const MAX_CELLS = 4_000_000;

/**
 * The lines of `a` and `b` as `[{op, text}]`, op ' ' (both), '-' (only in
 * a), '+' (only in b), in order; null when the texts are too large to diff.
 */
export function diffLines(a, b) {
  const x = a.split('\n');
  const y = b.split('\n');
  if (x.length * y.length > MAX_CELLS) return null;
  // lcs[i][j]: length of the longest common subsequence of x[i..] and y[j..].
  const width = y.length + 1;
  const lcs = new Uint32Array((x.length + 1) * width);
  for (let i = x.length - 1; i >= 0; i -= 1) {
    for (let j = y.length - 1; j >= 0; j -= 1) {
      lcs[i * width + j] =
        x[i] === y[j] ? lcs[(i + 1) * width + j + 1] + 1 : Math.max(lcs[(i + 1) * width + j], lcs[i * width + j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < x.length && j < y.length) {
    if (x[i] === y[j]) {
      out.push({ op: ' ', text: x[i] });
      i += 1;
      j += 1;
    } else if (lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
      out.push({ op: '-', text: x[i] });
      i += 1;
    } else {
      out.push({ op: '+', text: y[j] });
      j += 1;
    }
  }
  for (; i < x.length; i += 1) out.push({ op: '-', text: x[i] });
  for (; j < y.length; j += 1) out.push({ op: '+', text: y[j] });
  return out;
}
