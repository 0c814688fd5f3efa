// The position map: every terminal with a position as an SVG mark at its lat/lon, coloured by state
// (and labelled in words by the legend and each mark's title), over the county outline when one is
// configured. No tiles, nothing from the internet: an equirectangular projection of the points.
import { api } from "../api.js";
import { h, mount, svg } from "../dom.js";
import { addStrings, t } from "../i18n.js";
import { STATE_CLASSES, errorBox, gwName, liveReload, stateClass, stateLabel } from "../labels.js";

addStrings({
  zh: {
    "map.legend": "图例",
    "map.none": "还没有带位置的终端。",
    "map.gwOffline": "（网关离线，状态可能已过时）",
    "map.count": "{n} 个终端",
    "map.aria": "全县终端位置图",
  },
  en: {
    "map.legend": "Legend",
    "map.none": "No terminal with a position yet.",
    "map.gwOffline": "(gateway offline: the state may be stale)",
    "map.count": "{n} terminals",
    "map.aria": "Map of the county's terminals",
  },
});

const WIDTH = 1000;
const PAD = 30;

/** Every [lon, lat] ring of a GeoJSON object (FeatureCollection, Feature or geometry). */
export function rings(geo) {
  if (!geo || typeof geo !== "object") return [];
  switch (geo.type) {
    case "FeatureCollection": return (geo.features || []).flatMap(rings);
    case "Feature": return rings(geo.geometry);
    case "GeometryCollection": return (geo.geometries || []).flatMap(rings);
    case "Polygon": case "MultiLineString": return geo.coordinates || [];
    case "MultiPolygon": return (geo.coordinates || []).flat();
    case "LineString": return [geo.coordinates || []];
    default: return [];
  }
}

function numeric(pair) {
  return Array.isArray(pair) && Number.isFinite(Number(pair[0])) && Number.isFinite(Number(pair[1]));
}

/** A projection fitting all [lon, lat] pairs into WIDTH × height (north up, metres-ish aspect). */
function projection(pairs) {
  let [minLon, maxLon, minLat, maxLat] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const [lon, lat] of pairs) {
    minLon = Math.min(minLon, lon);
    maxLon = Math.max(maxLon, lon);
    minLat = Math.min(minLat, lat);
    maxLat = Math.max(maxLat, lat);
  }
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180) || 1;
  const spanX = Math.max((maxLon - minLon) * k, 1e-4);
  const spanY = Math.max(maxLat - minLat, 1e-4);
  const scale = Math.min((WIDTH - 2 * PAD) / spanX, (WIDTH * 0.75 - 2 * PAD) / spanY);
  const height = Math.round(spanY * scale + 2 * PAD);
  const offX = (WIDTH - spanX * scale) / 2;
  return { height, xy: (lon, lat) => [offX + (lon - minLon) * k * scale, PAD + (maxLat - lat) * scale] };
}

function drawMap(data) {
  const points = (data.points || []).filter((p) => numeric([p.lon, p.lat]));
  const outline = rings(data.outline).map((ring) => (ring || []).filter(numeric));
  const pairs = [...points.map((p) => [Number(p.lon), Number(p.lat)]), ...outline.flat().map((c) => [Number(c[0]),
    Number(c[1])])];
  if (!pairs.length) return h("p", { class: "muted", "data-testid": "map-empty" }, t("map.none"));
  const proj = projection(pairs);
  const paths = outline.filter((r) => r.length > 1).map((ring) => {
    const d = ring.map((c, i) => {
      const [x, y] = proj.xy(Number(c[0]), Number(c[1]));
      return `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
    }).join(" ");
    return svg("path", { d: `${d} Z`, class: "outline", "data-testid": "map-outline" });
  });
  const marks = points.map((p) => {
    const cls = stateClass(p);
    const [x, y] = proj.xy(Number(p.lon), Number(p.lat));
    const stale = p.gateway_status === "offline";
    const label = `${gwName(p)} · ${p.village || ""} · ${p.name || p.device} — ${t(`st.${cls}`)}` +
      (stale ? ` ${t("map.gwOffline")}` : "");
    return svg("a", { class: "mark-link", tabindex: "0", role: "link", "aria-label": label,
      on: { click: () => { location.hash = `#/gateway/${encodeURIComponent(p.gateway)}`; },
        keydown: (e) => { if (e.key === "Enter") location.hash = `#/gateway/${encodeURIComponent(p.gateway)}`; } } },
    svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 7, class: ["mark", `st-${cls}`, stale ? "stale" : null],
      "data-testid": `mark-${p.gateway}-${p.device}`, "data-state": cls, "data-gateway": p.gateway },
    svg("title", {}, label)));
  });
  return svg("svg", { viewBox: `0 0 ${WIDTH} ${proj.height}`, class: "county-map", role: "img",
    "aria-label": t("map.aria"), "data-testid": "county-map" }, paths, marks);
}

function legend(points) {
  const counts = {};
  for (const p of points) {
    const cls = stateClass(p);
    counts[cls] = (counts[cls] || 0) + 1;
  }
  return h("ul", { class: "legend", "data-testid": "map-legend", "aria-label": t("map.legend") },
    STATE_CLASSES.map((cls) => h("li", { "data-testid": `legend-${cls}`, "data-n": counts[cls] || 0 },
      h("span", { class: ["swatch", `st-${cls}`], "aria-hidden": "true" }), stateLabel(cls), ` ${counts[cls] || 0}`)));
}

function render(root) {
  let alive = true;
  const load = async () => {
    try {
      const data = await api("GET", "/map");
      if (!alive) return;
      const points = data.points || [];
      mount(root, h("h1", {}, t("nav.map"), " ", h("span", { class: "muted" }, t("map.count", { n: points.length }))),
        legend(points), h("div", { class: "map-wrap" }, drawMap(data)));
    } catch (err) {
      if (alive) mount(root, errorBox(err));
    }
  };
  mount(root, h("p", { class: "notice" }, t("common.loading")));
  load();
  const off = liveReload(["gateway.status", "gateway.birth", "device.state"], load);
  return () => {
    alive = false;
    off();
  };
}

export default { id: "map", navKey: "nav.map", minRole: "viewer", render };
