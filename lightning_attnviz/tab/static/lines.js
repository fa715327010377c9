// The lines view: each query joined to its top keys, opacity as the logged arrows picture draws it:
// how far above uniform the weight is on the log scale (none at or below uniform).

import { isolate } from "./labels.js";
import { rowStats, topKeys } from "./matrix.js";
import { UNIFORM_AT, logPlace } from "./scale.js";
import { LABEL_MIN_CELL, MONO, fitLabel, sizeCanvas } from "./views.js";

export const LINES_TOP_K = 3; // keys drawn per query

/**
 * @typedef {object} LinesLayout
 * @property {"lines"} kind
 * @property {number} top
 * @property {number} rowQ  CSS px per query
 * @property {number} q
 * @property {number} k
 * @property {number} width
 */

/**
 * @param {HTMLCanvasElement} canvas
 * @param {import("./matrix.js").Matrix} matrix
 * @param {import("./record.js").Header} header
 * @param {number | null} active
 * @param {import("./colors.js").Theme} theme
 * @param {{width: number, height: number}} room
 * @returns {LinesLayout}
 */
export function drawLines(canvas, matrix, header, active, theme, room) {
  const { q, k } = header;
  const width = Math.min(room.width, 740);
  const rows = Math.max(q, k);
  const pitch = Math.max(0.5, Math.min(22, (room.height - 32) / rows)); // fit the window
  const top = 24;
  const ctx = sizeCanvas(canvas, width, Math.round(top + pitch * rows + 8));
  const rowQ = (pitch * rows) / q;
  const rowK = (pitch * rows) / k;
  const xq = width * 0.36;
  const xk = width * 0.64;
  const yq = (/** @type {number} */ i) => top + (i + 0.5) * rowQ;
  const yk = (/** @type {number} */ j) => top + (j + 0.5) * rowK;

  if (!matrix.lines) {
    // every query's top keys, once per matrix: hovering only redraws; the third value is the opacity
    matrix.lines = [];
    const { totals, counts } = rowStats(matrix);
    for (let i = 0; i < q; i++) {
      for (const { key, weight } of topKeys(matrix, i, LINES_TOP_K)) {
        const perToken = matrix.keyTokens ? weight / matrix.keyTokens[key] : weight; // as the heatmap colours it
        const above = (logPlace(perToken, totals[i], counts[i]) - UNIFORM_AT) / (1 - UNIFORM_AT);
        if (above > 0.02) matrix.lines.push([i, key, above]);
      }
    }
  }
  const lines = matrix.lines;
  const stroke = (/** @type {number} */ i, /** @type {number} */ j) => {
    ctx.beginPath();
    ctx.moveTo(xq, yq(i));
    ctx.lineTo(xk, yk(j));
    ctx.stroke();
  };
  ctx.lineCap = "round";
  ctx.lineWidth = Math.max(0.75, Math.min(2.5, pitch / 6));
  for (const [i, j, w] of lines) {
    if (i === active) continue;
    const alpha = w * (active === null ? 0.85 : 0.18);
    ctx.strokeStyle = `rgba(${theme.line}, ${alpha.toFixed(3)})`;
    stroke(i, j);
  }
  ctx.lineWidth = Math.max(1.5, Math.min(3.5, pitch / 4));
  for (const [i, j, w] of lines) {
    if (i !== active) continue;
    ctx.strokeStyle = `rgba(${theme.lineActive}, ${Math.max(0.3, w).toFixed(3)})`;
    stroke(i, j);
  }

  const labelled = pitch >= LABEL_MIN_CELL;
  ctx.font = MONO;
  ctx.textBaseline = "middle";
  const dot = (/** @type {number} */ x, /** @type {number} */ y, /** @type {boolean} */ on) => {
    ctx.fillStyle = on ? theme.accent : theme.dot;
    ctx.beginPath();
    ctx.arc(x, y, Math.max(1, Math.min(3, pitch / 4)), 0, 2 * Math.PI);
    ctx.fill();
  };
  const keysOfActive = new Set(lines.filter(([i]) => i === active).map(([, j]) => j));
  ctx.textAlign = "right";
  for (let i = 0; i < q; i++) {
    dot(xq, yq(i), i === active);
    if (labelled || i === active) {
      ctx.fillStyle = i === active ? theme.accent : theme.text;
      const label = header.q_labels[i];
      const text = label === String(i) ? `${i}` : `${isolate(label)}  ${i}`;
      ctx.fillText(fitLabel(ctx, text, xq - 14), xq - 8, yq(i));
    }
  }
  ctx.textAlign = "left";
  let lastLabelY = -Infinity; // unlabelled columns: the active keys' labels, without overlaps
  for (let j = 0; j < k; j++) {
    dot(xk, yk(j), keysOfActive.has(j));
    if (labelled || (keysOfActive.has(j) && yk(j) - lastLabelY >= 12)) {
      lastLabelY = yk(j);
      ctx.fillStyle = keysOfActive.has(j) ? theme.accent : theme.text;
      const label = header.k_labels[j];
      const text = label === String(j) ? `${j}` : `${j}  ${isolate(label)}`;
      ctx.fillText(fitLabel(ctx, text, width - xk - 14), xk + 8, yk(j));
    }
  }
  ctx.font = "11px Roboto, Arial, sans-serif";
  ctx.fillStyle = theme.muted;
  ctx.textBaseline = "top";
  ctx.textAlign = "center";
  ctx.fillText("queries", xq, 4);
  ctx.fillText(`keys (top ${LINES_TOP_K} per query)`, xk, 4);
  return { kind: "lines", top, rowQ, q, k, width };
}
