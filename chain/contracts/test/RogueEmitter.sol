// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title RogueEmitter: test-only. Emits arbitrary raw logs, so tests can put malformed or
/// unknown events on a real chain (including at the vault's address via anvil_setCode).
contract RogueEmitter {
    function emitRaw(bytes32[] calldata topics, bytes calldata data) external {
        bytes memory d = data;
        uint256 n = topics.length;
        assembly {
            let p := add(d, 32)
            let len := mload(d)
            switch n
            case 0 { log0(p, len) }
            case 1 { log1(p, len, calldataload(topics.offset)) }
            case 2 { log2(p, len, calldataload(topics.offset), calldataload(add(topics.offset, 32))) }
            case 3 {
                log3(p, len, calldataload(topics.offset), calldataload(add(topics.offset, 32)),
                    calldataload(add(topics.offset, 64)))
            }
            default {
                log4(p, len, calldataload(topics.offset), calldataload(add(topics.offset, 32)),
                    calldataload(add(topics.offset, 64)), calldataload(add(topics.offset, 96)))
            }
        }
    }
}
