// Small SVG line charts of recent resource samples.

const SVG = 'http://www.w3.org/2000/svg';

/** An empty sparkline `width` x `height` pixels. */
export function sparkline(width, height, label) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const area = document.createElementNS(SVG, 'path');
  area.setAttribute('class', 'spark-area');
  const line = document.createElementNS(SVG, 'path');
  line.setAttribute('class', 'spark-line');
  const dot = document.createElementNS(SVG, 'circle');
  dot.setAttribute('class', 'spark-dot');
  dot.setAttribute('r', '0');
  svg.append(area, line, dot);
  return svg;
}

/**
 * Draws `points` ([{t: ms since epoch, v}]) into `svg`, time on x up to the
 * newest point, 0..max(v, floor) on y, with a dot on the newest. The time
 * axis spans the history, at least `minWindowMs` and at most `maxWindowMs`,
 * so a short history is not a sliver; a gap longer than `gapMs` (the child
 * was down) breaks the line.
 */
export function draw(svg, points, { maxWindowMs = 6 * 60 * 1000, minWindowMs = 10 * 1000, floor = 1, gapMs = 10000 } = {}) {
  const width = Number(svg.getAttribute('width'));
  const height = Number(svg.getAttribute('height'));
  const [area, line, dot] = svg.children;
  if (!points.length) {
    area.setAttribute('d', '');
    line.setAttribute('d', '');
    dot.setAttribute('r', '0');
    return;
  }
  const end = points[points.length - 1].t;
  const windowMs = Math.min(maxWindowMs, Math.max(minWindowMs, end - points[0].t));
  const start = end - windowMs;
  let max = floor;
  for (const p of points) if (p.t >= start && p.v > max) max = p.v;
  const x = (t) => (((t - start) / windowMs) * (width - 2) + 1).toFixed(1);
  const y = (v) => (height - 1 - (v / max) * (height - 3)).toFixed(1);
  let d = '';
  let fill = '';
  let segmentStart = null;
  let previous = null;
  for (const p of points) {
    if (p.t < start) continue;
    const broken = previous && p.t - previous.t > gapMs;
    if (!previous || broken) {
      if (segmentStart) fill += `L${x(previous.t)},${height}L${x(segmentStart.t)},${height}Z`;
      d += `M${x(p.t)},${y(p.v)}`;
      fill += `M${x(p.t)},${y(p.v)}`;
      segmentStart = p;
    } else {
      d += `L${x(p.t)},${y(p.v)}`;
      fill += `L${x(p.t)},${y(p.v)}`;
    }
    previous = p;
  }
  if (segmentStart) fill += `L${x(previous.t)},${height}L${x(segmentStart.t)},${height}Z`;
  line.setAttribute('d', d);
  area.setAttribute('d', fill);
  dot.setAttribute('cx', x(previous.t));
  dot.setAttribute('cy', y(previous.v));
  dot.setAttribute('r', '1.8');
}
