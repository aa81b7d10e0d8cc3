/** Bytes as a person reads them: 1.5 GiB, 64 MiB, 980 B. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${bytes} B` : `${value >= 10 ? value.toFixed(0) : value.toFixed(1)} ${units[unit]}`;
}
