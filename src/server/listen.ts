// Listening sockets: bound with an error that names what the address is for, and closed.

import type http from 'node:http';
import type net from 'node:net';
import { formatAddress, type Address } from '../control/config.js';
import { BlockmirrorError } from '../lib/errors.js';

/** Listens on `address` (port 0: one the kernel picks) and resolves with the address bound. */
export function listen(server: net.Server, address: Address, what: string): Promise<Address> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      reject(
        error.code === 'EADDRINUSE'
          ? new BlockmirrorError('ERR_ADDRESS_IN_USE', `${what} address ${formatAddress(address)} is already in use`)
          : error,
      );
    };
    server.once('error', onError);
    server.listen({ host: address.host, port: address.port }, () => {
      server.off('error', onError);
      const bound = server.address();
      if (bound === null || typeof bound === 'string') return reject(new Error(`${what}: no address`));
      resolve({ host: address.host, port: bound.port });
    });
  });
}

export function closeServer(server: net.Server | http.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}
