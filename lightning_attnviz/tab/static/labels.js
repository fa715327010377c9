// Text shown for tokens, layers and weights. Pure: no DOM, so node's test runner imports it.

const FSI = "\u2068"; // first strong isolate
const PDI = "\u2069"; // pop directional isolate

/**
 * A label that cannot reorder its neighbours: token strings may hold bidi controls (U+202E …), which
 * would otherwise move the text around them ("i@3" could read "3@i"). Wrapped in FSI…PDI.
 * @param {string} text
 * @returns {string}
 */
export function isolate(text) {
  return `${FSI}${text}${PDI}`;
}

/**
 * `text` cut in the middle to at most `max` characters: both ends of a module path stay readable
 * ("model.encoder…layers.11.attn").
 * @param {string} text
 * @param {number} max
 * @returns {string}
 */
export function shortenMiddle(text, max) {
  if (text.length <= max) return text;
  const keep = max - 1;
  const head = Math.ceil(keep / 2);
  return `${text.slice(0, head)}…${text.slice(text.length - (keep - head))}`;
}

/**
 * Sort order with numbers by value: blocks.2 before blocks.10.
 * @param {string} a
 * @param {string} b
 * @returns {number}
 */
export function naturalCompare(a, b) {
  return a.localeCompare(b, "en", { numeric: true });
}

/**
 * A weight with three decimals, or two significant digits below 0.001 (a long row's weights are small).
 * @param {number} weight
 */
export function formatWeight(weight) {
  if (!Number.isFinite(weight)) return "NaN";
  return weight !== 0 && Math.abs(weight) < 0.001 ? weight.toPrecision(2) : weight.toFixed(3);
}

/**
 * One line of the top-keys list: the key's label and position, since tokens repeat ("i@3  0.989").
 * @param {string} label
 * @param {number} key
 * @param {number} weight
 * @returns {string}
 */
export function topKeyLine(label, key, weight) {
  return label === String(key) ? `@${key}  ${formatWeight(weight)}` : `${isolate(label)}@${key}  ${formatWeight(weight)}`;
}

/**
 * "query 3 · cat", or for an image's patch tokens "patch (1, 2) · query 11"; labels isolated.
 * @param {import("./record.js").Header} header
 * @param {number} index
 * @returns {string}
 */
export function tokenName(header, index) {
  const label = header.q_labels[index];
  const named = label !== String(index);
  const info = header.image;
  const patch = index - (info ? info.prefix : 0);
  if (info && patch >= 0 && patch < info.grid[0] * info.grid[1]) {
    const where = `patch (${Math.floor(patch / info.grid[1])}, ${patch % info.grid[1]})`;
    return named ? `${where} · ${isolate(label)}` : `${where} · query ${index}`;
  }
  return named ? `query ${index} · ${isolate(label)}` : `query ${index}`;
}

/**
 * What the image overlay shows, said once: the hovered token's row, the first prefix token's row
 * (CLS), or without prefix tokens the mean attention each patch receives.
 * @param {import("./record.js").Header} header
 * @param {number | null} active
 * @returns {string}
 */
export function overlayCaption(header, active) {
  if (active !== null) return `where ${tokenName(header, active)} attends`;
  if (header.image && header.image.prefix > 0) return `${tokenName(header, 0)} → patches · hover a patch`;
  return "mean attention received · hover a patch";
}
