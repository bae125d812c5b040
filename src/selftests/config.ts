// What a kselftest collection asks of the kernel config. Each collection may
// carry a `config` file (tools/testing/selftests/<collection>/config, the
// lines kselftest's docs say to merge before building), e.g. iommu's asks for
// CONFIG_IOMMUFD_TEST. hwlab checks those lines against the lab's assembled
// config before the kernel is built, by symbol, so a lab that would run
// iommufd against a kernel without the mock domain stops with the names of
// what is missing instead of a page of SKIPs (or a wasted build).
import { readConfigLines } from '../kernel/dotconfig.ts';

/** A collection's config file as read from the kernel tree. */
export interface CollectionConfig {
  collection: string;
  /** Tree-relative path, for messages: tools/testing/selftests/iommu/config. */
  file: string;
  text: string;
}

/** One line of a collection's config that the kernel config does not satisfy. */
export interface UnmetSelftestSymbol {
  collection: string;
  file: string;
  line: number;
  symbol: string;
  wanted: string;
  /** The value in the assembled config ('n' when unset). */
  got: string;
}

/**
 * y and m both satisfy a line that asks for either (a collection asking for
 * CONFIG_VFIO=y runs as well with vfio as a module, which is how the labs
 * build it; a `bool` inside an m-tristate's module is y); "is not set" and
 * n want the symbol off; any other value (numbers, strings) must be equal.
 */
function satisfies(wanted: string, got: string): boolean {
  if (wanted === 'y' || wanted === 'm') return got === 'y' || got === 'm';
  if (wanted === 'n') return got === 'n';
  return wanted === got;
}

/** Every line of the collections' config files that `kernelConfig` (a .config's text) does not satisfy. */
export function unmetSelftestSymbols(collections: readonly CollectionConfig[], kernelConfig: string): UnmetSelftestSymbol[] {
  const have = new Map(readConfigLines(kernelConfig).map((c) => [c.symbol, c.value]));
  const out: UnmetSelftestSymbol[] = [];
  for (const c of collections) {
    for (const l of readConfigLines(c.text)) {
      const got = have.get(l.symbol) ?? 'n';
      if (!satisfies(l.value, got)) out.push({ collection: c.collection, file: c.file, line: l.line, symbol: l.symbol, wanted: l.value, got });
    }
  }
  return out;
}

/** One message line per unmet symbol, in the style of the lab fragments' check: file:line: CONFIG_X=y is n. */
export function formatUnmet(u: UnmetSelftestSymbol): string {
  const wanted = u.wanted === 'n' ? ' is not set' : `=${u.wanted}`;
  return `${u.file}:${u.line}: CONFIG_${u.symbol}${wanted} is wanted by the ${u.collection} selftests; the kernel config has ${u.got === 'n' ? 'it unset' : `CONFIG_${u.symbol}=${u.got}`}`;
}
