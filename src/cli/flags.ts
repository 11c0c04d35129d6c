// The command line's flags: each subcommand names its valued flags and switches, and
// anything else is a usage error (exit 2).

import { BlockmirrorError } from '../lib/errors.js';

export interface Flags {
  values: Map<string, string>;
  switches: Set<string>;
}

export function parseFlags(args: string[], valueFlags: string[], switchFlags: string[]): Flags {
  const values = new Map<string, string>();
  const switches = new Set<string>();
  for (let index = 0; index < args.length; index += 1) {
    const arg = args[index] ?? '';
    const [name, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    if (valueFlags.includes(name)) {
      const value = inline ?? args[++index];
      if (value === undefined) throw new BlockmirrorError('ERR_USAGE', `${name} needs a value`);
      values.set(name, value);
    } else if (switchFlags.includes(name) && inline === undefined) {
      switches.add(name);
    } else {
      throw new BlockmirrorError('ERR_USAGE', `unknown argument "${arg}" (see blockmirror --help)`);
    }
  }
  return { values, switches };
}

export function required(flags: Flags, name: string): string {
  const value = flags.values.get(name);
  if (value === undefined) throw new BlockmirrorError('ERR_USAGE', `${name} is required`);
  return value;
}
