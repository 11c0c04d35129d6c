// The datagram link port (docs/architecture.md, "I/O ports and their twins"): unreliable,
// unordered datagrams between nodes, as the heartbeats use them. `udpDatagramLink` is the
// real one; `MemoryNetwork.datagrams` (memory-network.ts) is its twin, in one process,
// whose links a test can cut. Both pass test/unit/network-ports.test.ts.

import dgram from 'node:dgram';
import net from 'node:net';
import type { NetAddress } from './stream-link.js';

export interface DatagramSocket {
  /** The address bound (the port the system picked for port 0). */
  readonly address: NetAddress;
  /** Sends one datagram; `sent` says whether it left (a datagram that left may still be lost). */
  send(datagram: Buffer, to: NetAddress, sent?: (ok: boolean) => void): void;
  /** Stops receiving; later sends are dropped. */
  close(): void;
}

export interface DatagramLink {
  /**
   * Binds `address` and hands every datagram received to `onMessage`, with its sender as
   * `host:port`. Rejects with an error whose `code` is 'EADDRINUSE' when the address is taken.
   */
  bind(address: NetAddress, onMessage: (datagram: Buffer, from: string) => void, onError: (error: Error) => void): Promise<DatagramSocket>;
}

export const udpDatagramLink: DatagramLink = {
  bind(address, onMessage, onError) {
    const socket = dgram.createSocket({ type: net.isIPv6(address.host) ? 'udp6' : 'udp4' });
    let closed = false;
    socket.on('message', (datagram, from) => onMessage(datagram, `${from.address}:${from.port}`));
    return new Promise((resolve, reject) => {
      socket.once('error', reject);
      socket.bind({ address: address.host, port: address.port }, () => {
        socket.off('error', reject);
        socket.on('error', onError);
        resolve({
          address: { host: address.host, port: socket.address().port },
          send(datagram, to, sent) {
            if (closed) {
              sent?.(false);
              return;
            }
            socket.send(datagram, to.port, to.host, (error) => sent?.(!error));
          },
          close() {
            if (closed) return;
            closed = true;
            socket.close();
          },
        });
      });
    });
  },
};
