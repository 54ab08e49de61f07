// The page of `translate serve`: plain JS, no build step, nothing from the network but
// this server's own API (POST /v1/translate, GET /v1/models).
"use strict";

const $ = (id) => document.getElementById(id);
let results = [];  // the last response's translations, one per source line that is not blank
let numbers = [];  // those lines' numbers in the text (from 1): the list numbers them so
let given = "";  // the prefix they were asked to begin with ("" for none)
let latest = 0;  // the newest request's number: an older one's answer, arriving late, is dropped
const PAUSE_MS = 250;  // typing a prefix translates again once the typing pauses this long
let typing;  // the timer of that pause

async function loadModel() {
  const response = await fetch("/v1/models");
  const info = await response.json();
  $("languages").textContent = `${info.source_language} → ${info.target_language}`;
  $("beam").max = info.limits.max_beam_size;
  $("beam").value = info.defaults.beam_size;
  $("nbest").max = info.limits.max_beam_size;
}

async function translate(event) {
  if (event) event.preventDefault();
  clearTimeout(typing);
  const text = $("source").value.split("\n");
  const sent = [...text.keys()].filter((i) => text[i].trim() !== "");  // blank lines: no request
  if (sent.length === 0) return;
  const lines = sent.map((i) => text[i]);
  const request = ++latest;
  const prefix = prefixes(lines.length);
  $("translate").disabled = true;
  try {
    const response = await fetch("/v1/translate", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({
        text: lines,
        ...searchOptions(),
        ...prefix,
        return_scores: $("scores").checked,
        return_attention: true,
      }),
    });
    const body = await response.json();
    if (request !== latest) return;  // the translator has typed on: a newer answer is coming
    if (!response.ok) throw new Error(body.error || response.statusText);
    $("error").hidden = true;
    results = body.translations;
    numbers = sent.map((i) => i + 1);
    given = prefix.prefix ? prefix.prefix[0].trim() : "";
    showTranslations();
    choose(0);
  } catch (error) {
    if (request !== latest) return;
    $("error").textContent = error.message;
    $("error").hidden = false;
  } finally {
    if (request === latest) $("translate").disabled = false;
  }
}

// Interactive translation: as the translator types the translation's beginning, each pause
// asks for the completion again, without pressing Translate.
function typed() {
  clearTimeout(typing);
  typing = setTimeout(translate, PAUSE_MS);
}

// Sampling draws one translation a sentence: beam size and n-best do not apply to it (the
// service refuses them), the seed only to it.
function searchOptions() {
  if ($("sample").checked) return {sampling: true, seed: seed()};
  return {beam_size: Number($("beam").value), nbest: Number($("nbest").value)};
}

// The seed as typed, every digit of it: the service takes any integer, where Number() would
// round one past 2**53 and JSON.stringify would write 1e21 as 1e+21, which is no integer.
function seed() {
  const typed = $("seed").value.trim();
  if (!/^-?\d+$/.test(typed)) throw new Error(`seed: must be a whole number, got "${typed}"`);
  const digits = BigInt(typed).toString();  // "007" is no JSON number
  return JSON.rawJSON ? JSON.rawJSON(digits) : Number(digits);
}

// What the translator typed as the translation's beginning, for every line; the model
// completes it (interactive translation), its last word too unless a space ends it, so the
// space is sent as typed. Nothing typed: no prefix sent.
function prefixes(count) {
  const prefix = $("prefix").value.trimStart();
  return prefix.trim() ? {prefix: Array(count).fill(prefix)} : {};
}

function showSampling() {
  const sampling = $("sample").checked;
  $("beam").disabled = $("nbest").disabled = sampling;
  $("seed").disabled = !sampling;
}

function showTranslations() {
  const list = $("translations");
  list.replaceChildren();
  results.forEach((result, i) => {
    const item = document.createElement("li");
    item.value = numbers[i];
    // The typed beginning in grey, the model's completion after it.
    const typed = given && result.text.startsWith(given) ? given : "";
    if (typed) {
      const span = document.createElement("span");
      span.className = "given";
      span.textContent = typed;
      item.append(span);
    }
    item.append(result.text.slice(typed.length));
    item.addEventListener("click", () => choose(i));
    list.append(item);
  });
  $("results").hidden = false;
}

function choose(index) {
  [...$("translations").children].forEach((li, i) => li.classList.toggle("chosen", i === index));
  const result = results[index];
  showNbest(result);
  showAttention(result.attention);
}

function showNbest(result) {
  const rows = $("nbest-list").tBodies[0];
  rows.replaceChildren();
  const hypotheses = result.nbest || [];
  for (const hyp of hypotheses) {
    const row = rows.insertRow();
    row.insertCell().textContent = hyp.score === undefined ? "" : hyp.score.toFixed(4);
    row.insertCell().textContent = hyp.text;
  }
  $("nbest-box").hidden = hypotheses.length === 0;
}

// A grid: a corner, one column label per source piece, then per target piece its label and
// one cell per source piece, shaded by the weight.
function showAttention(attention) {
  const map = $("heatmap");
  map.replaceChildren();
  $("cell-info").textContent = "Point at a cell.";
  if (!attention) return;
  const {src_pieces: src, tgt_pieces: tgt, weights} = attention;
  map.style.gridTemplateColumns = `auto repeat(${src.length}, 1.6rem)`;
  map.append(label("", "corner"));
  for (const piece of src) map.append(label(piece, "col"));
  tgt.forEach((tgtPiece, t) => {
    map.append(label(tgtPiece, "row"));
    src.forEach((srcPiece, s) => {
      const weight = weights[t][s];
      const cell = document.createElement("div");
      cell.className = "cell";
      cell.style.background = `rgba(20, 60, 160, ${weight.toFixed(3)})`;
      cell.title = `${srcPiece} → ${tgtPiece}: ${weight.toFixed(3)}`;
      cell.addEventListener("mouseenter", () => {
        $("cell-info").textContent =
          `source "${srcPiece}" — target "${tgtPiece}": weight ${weight.toFixed(3)}`;
      });
      map.append(cell);
    });
  });
}

function label(text, kind) {
  const element = document.createElement("div");
  element.className = `label ${kind}`;
  element.textContent = text;
  return element;
}

$("form").addEventListener("submit", translate);
$("prefix").addEventListener("input", typed);
$("sample").addEventListener("change", showSampling);
// Going back (or reloading), a browser may restore the box checked after this script has run;
// "pageshow" comes after that.
window.addEventListener("pageshow", showSampling);
loadModel().catch((error) => {
  $("error").textContent = `cannot reach the service: ${error.message}`;
  $("error").hidden = false;
});
