// Parse a Mermaid diagram from stdin with Mermaid's own parser (jsdom stands in for the browser)
// and print what it understood as JSON: vertices, edges, subgraphs. Exit 1 on a parse error.
import { JSDOM } from "jsdom";
import fs from "node:fs";
const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const mermaid = (await import("mermaid")).default;
mermaid.initialize({ startOnLoad: false, securityLevel: "strict" });
const text = fs.readFileSync(0, "utf8");
// Label text as Mermaid renders it: its #name; entity codes decoded (mermaid's decodeEntities,
// then the HTML entities; a textarea parses its content as text, so <br> stays as it is).
const decode = (label) => {
  const area = document.createElement("textarea");
  area.innerHTML = label.replace(/ﬂ°°/g, "&#").replace(/ﬂ°/g, "&").replace(/¶ß/g, ";");
  return area.value;
};
try {
  const result = await mermaid.parse(text);
  const diag = await mermaid.mermaidAPI.getDiagramFromText(text);
  const db = diag.db;
  const vertices = db.getVertices ? db.getVertices() : new Map();
  const out = { type: result.diagramType, vertices: {}, edges: [], subgraphs: [] };
  for (const [id, v] of vertices) out.vertices[id] = { text: decode(v.text), classes: v.classes };
  for (const e of db.getEdges()) out.edges.push([e.start, e.end]);
  for (const s of db.getSubGraphs()) out.subgraphs.push({ id: s.id, title: s.title, nodes: s.nodes });
  console.log(JSON.stringify(out));
} catch (e) {
  console.error("PARSE ERROR: " + (e.message || e));
  process.exit(1);
}
