// What both consoles read the same way in a terminal's report (shared: /ui/common/js/terminal.js).

/** The display class of a terminal: fault wins, then offline, then the state code. */
export function stateClass(dev) {
  if (dev.state === 3) return "fault";
  if (dev.online === false) return "offline";
  switch (dev.state) {
    case 1: return "normal";
    case 2: return "stopped";
    case 4: return "recovered";
    case 5: return "playing";
    default: return "unknown";
  }
}
